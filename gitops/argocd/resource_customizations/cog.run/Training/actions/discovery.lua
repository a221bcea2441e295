-- Argo CD actions of a cog.run/v1alpha1 Training: cancel, suspend and resume, while it runs.
local actions = {}
local status = obj.status or {}
local spec = obj.spec or {}
local finished = status.phase == "Succeeded" or status.phase == "Failed" or status.phase == "Canceled"
local closed = finished or spec.cancel == true
local suspended = spec.suspend == true

actions["cancel"] = {["disabled"] = closed, ["iconClass"] = "fa fa-fw fa-stop", ["displayName"] = "Cancel training"}
actions["suspend"] = {["disabled"] = closed or suspended, ["iconClass"] = "fa fa-fw fa-pause"}
actions["resume"] = {["disabled"] = closed or not suspended, ["iconClass"] = "fa fa-fw fa-play"}
return actions
