-- Argo CD health check of streamjob.dev/StreamJob.
--
-- Install it in argocd-cm under resource.customizations.health.streamjob.dev_StreamJob
-- (see docs/gitops.md). Argo CD runs custom checks in gopher-lua with only the base, table
-- and package libraries (plus a reduced os), so this script uses no string library.
--
-- Order of the rules:
--   status missing, or status.observedGeneration < metadata.generation  -> Progressing
--   condition Stalled=True                                                 -> Degraded
--   phase Suspended                                                        -> Suspended
--   condition Reconciling=True, or phase Rescaling or Pending              -> Progressing
--   condition Ready=True                                                   -> Healthy
--   anything else                                                          -> Progressing

-- The table Argo CD reads.
local function health(status, message)
  return { status = status, message = message }
end

-- The condition of that type in status.conditions, or nil.
local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

-- The condition's message, else its reason, else the fallback.
local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local metadata = obj.metadata or {}
local generation = metadata.generation
local status = obj.status

if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  if generation == nil then
    return health("Progressing", "Waiting for the operator to observe the job")
  end
  return health("Progressing", "Waiting for the operator to observe generation " .. generation)
end

local stalled = condition(status, "Stalled")
if isTrue(stalled) then
  return health("Degraded", describe(stalled, "The job is stalled"))
end

local phase = status.phase
if phase == "Suspended" then
  return health("Suspended", "Suspended (spec.state: suspended)")
end

local reconciling = condition(status, "Reconciling")
if phase == "Rescaling" then
  local rescale = status.rescale
  if rescale == nil or rescale.from == nil or rescale.to == nil then
    return health("Progressing", describe(reconciling, "Rescaling"))
  end
  local message = "Rescaling from " .. rescale.from .. " to " .. rescale.to .. " workers"
  if rescale.step ~= nil then
    message = message .. ": " .. rescale.step
  end
  return health("Progressing", message)
end
if isTrue(reconciling) then
  return health("Progressing", describe(reconciling, "Reconciling"))
end
if phase == "Pending" then
  return health("Progressing", "Waiting for the workers to start")
end

local ready = condition(status, "Ready")
if isTrue(ready) then
  return health("Healthy", describe(ready, "Every partition is owned by a running worker"))
end
return health("Progressing", describe(ready, "Waiting for the job to become ready"))
