-- Resume a suspended training.
if obj.spec.suspend == true then
  obj.spec.suspend = false
end
return obj
