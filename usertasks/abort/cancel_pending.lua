-- usertasks: raise the abort flags of tasks that look not started, and tell which a worker has
-- claimed already (atomically with claim.lua: whichever runs first decides).
--
-- KEYS: flag, claim marker (pairs, one per task).  ARGV[1]: the flag's value (a timestamp).
-- Returns for each task 1 when it is claimed (it must be treated as running), else 0.

local claimed = {}
for i = 1, #KEYS, 2 do
  redis.call('set', KEYS[i], ARGV[1])
  claimed[#claimed + 1] = redis.call('exists', KEYS[i + 1])
end
return claimed
