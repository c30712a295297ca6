-- usertasks: claim tasks before their runs, atomically with cancels (cancel_pending.lua).
--
-- ARGV[1]: the claim TTL (seconds); ARGV[2...]: for each task, how many flag keys it has.
-- KEYS: for each task its flag keys (its own, then its container's), then its claim marker.
--
-- Each task's result, in order: 0 when a flag is raised (the task must not run), 1 for a first
-- claim (the body may start at once), 2 when it was claimed before (a redelivery: the worker
-- takes the safe path).

local results = {}
local k = 1
for t = 2, #ARGV do
  local n = tonumber(ARGV[t])
  local result = nil
  for i = k, k + n - 1 do
    if result == nil and redis.call('exists', KEYS[i]) == 1 then result = 0 end
  end
  local marker = KEYS[k + n]
  if result == nil then
    if redis.call('set', marker, '1', 'EX', ARGV[1], 'NX') then
      result = 1
    else
      redis.call('expire', marker, ARGV[1])
      result = 2
    end
  end
  results[#results + 1] = result
  k = k + n + 1
end
return results
