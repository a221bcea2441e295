-- Argo CD health of a cog.run/v1alpha1 Training (docs/gitops.md): the operator's phase and
-- conditions as Argo CD's statuses. Written for Argo CD's Lua: base and table libraries only.
local hs = {}

-- Pending reasons that wait on a person, as Argo CD rates the same states of a Pod.
local degradedWhilePending = {
  ImagePullBackOff = true,
  CreateContainerConfigError = true,
  CreateContainerError = true,
  RunContainerError = true,
}

local status = obj.status or {}
local spec = obj.spec or {}
local metadata = obj.metadata or {}

local function condition(kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return {}
end

local function said(reason, message, fallback)
  if message == nil or message == "" then
    message = fallback
  end
  if reason == nil or reason == "" then
    return message
  end
  return reason .. ": " .. message
end

local phase = status.phase

if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the training"
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.weights ~= nil then
    hs.message = "The training succeeded; weights: " .. status.weights
  else
    hs.message = "The training succeeded"
  end
  return hs
end

if phase == "Failed" then
  local stalled = condition("Stalled")
  hs.status = "Degraded"
  hs.message = said(stalled.reason, status.error or stalled.message, "the training failed")
  return hs
end

if phase == "Canceled" then
  hs.status = "Suspended"
  hs.message = said("Canceled", condition("Ready").message, "the training was canceled")
  return hs
end

if phase ~= "Pending" and phase ~= "Running" then
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
  return hs
end

if spec.cancel == true then
  hs.status = "Progressing"
  hs.message = "Canceling: waiting for the operator to stop the training"
  return hs
end

if metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(metadata.generation)
  return hs
end

local reconciling = condition("Reconciling")
local reason = reconciling.reason

if phase == "Pending" and reason == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" and degradedWhilePending[reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = said(reason, reconciling.message, "the training is " .. phase)
if phase == "Running" and status.progress ~= nil and status.progress.percent ~= nil then
  hs.message = hs.message .. " (" .. tostring(status.progress.percent) .. "%)"
end
return hs
