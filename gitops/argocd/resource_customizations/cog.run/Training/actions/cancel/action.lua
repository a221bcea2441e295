-- Stop the training: the operator deletes its Job and marks the Training Canceled (final).
local phase = (obj.status or {}).phase
if phase ~= "Succeeded" and phase ~= "Failed" and phase ~= "Canceled" then
  obj.spec.cancel = true
end
return obj
