-- Argo CD health check for autotuner.io/CameraTuning (resource.customizations.health.autotuner.io_CameraTuning).
-- Reads what the operator writes: observedGeneration and the conditions (Stalled, Degraded,
-- Reconciling, Ready). It agrees with kstatus (Flux) in every phase, but one thing kstatus has
-- no word for: a model rolled back (the previous one still serves) is Degraded here, Current there.
local hs = { status = "Progressing", message = "waiting for the operator to reconcile" }
if obj.status == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not seen the latest spec yet"
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  conditions[condition.type] = condition
end
local function holds(type)
  return conditions[type] ~= nil and conditions[type].status == "True"
end
if holds("Stalled") then
  return { status = "Degraded", message = conditions["Stalled"].message }
end
if holds("Degraded") then
  -- A rolled-back model still serves the previous one: degraded, not down.
  return { status = "Degraded", message = conditions["Degraded"].message }
end
if holds("Reconciling") then
  return { status = "Progressing", message = conditions["Reconciling"].message }
end
if holds("Ready") then
  return { status = "Healthy", message = conditions["Ready"].message }
end
return hs
