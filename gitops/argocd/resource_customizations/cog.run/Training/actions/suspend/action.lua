-- Suspend the training's Job (as Kueue does); resume starts the training again from the beginning.
local phase = (obj.status or {}).phase
if phase ~= "Succeeded" and phase ~= "Failed" and phase ~= "Canceled" then
  obj.spec.suspend = true
end
return obj
