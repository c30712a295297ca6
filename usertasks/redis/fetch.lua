-- usertasks: fetch a batch for a consumer and claim its tracked messages, in one call.
--
-- KEYS[1]: Dramatiq's namespace.
-- ARGV: queue name, worker id, time (ms), count, flag key prefix, claim key prefix, claim TTL,
-- the names of the message options holding the status row and the container.
--
-- The fetch is what the "fetch" command of Dramatiq's dispatch.lua does (the worker's
-- heartbeat; up to ARGV[4] message ids popped from the queue, each added to the worker's set of
-- unacknowledged messages; their data read); tests/redis/test_mirrors.py checks it against the
-- installed Dramatiq.  In the same call, each tracked message (one with a status row) is
-- claimed as usertasks.abort's claim.lua claims it: "0" when its flag or its container's is
-- raised, "1" for a first claim, "2" when it was claimed before.
--
-- Returns the data of the messages joined by NUL bytes (JSON has none; a missing message is an
-- empty string), then for each tracked one "result NUL task id NUL container id or empty NUL
-- message id": few values to parse.

local namespace = KEYS[1]
local worker_id = ARGV[2]
redis.call("zadd", namespace .. ":__heartbeats__", ARGV[3], worker_id)
local queue = namespace .. ":" .. ARGV[1]
local acks = namespace .. ":__acks__." .. worker_id .. "." .. ARGV[1]
local ids = {}
for i = 1, tonumber(ARGV[4]) do
  local id = redis.call("lpop", queue)
  if not id then break end
  ids[i] = id
  redis.call("sadd", acks, id)
end
if #ids == 0 then return {} end
local data = redis.call("hmget", queue .. ".msgs", unpack(ids))
local function text(v)
  if type(v) == "number" then return string.format("%.0f", v) end
  return tostring(v)
end
local out = {""}
for i = 1, #ids do
  local ok, message = false, nil
  if data[i] then ok, message = pcall(cjson.decode, data[i]) else data[i] = "" end
  if ok and type(message) == "table" and type(message.options) == "table" then
    local task = message.options[ARGV[8]]
    if task ~= nil and task ~= cjson.null then
      task = text(task)
      local parent = message.options[ARGV[9]]
      if parent == nil or parent == cjson.null then parent = "" else parent = text(parent) end
      local result
      if redis.call("exists", ARGV[5] .. task) == 1 or (parent ~= "" and redis.call("exists", ARGV[5] .. parent) == 1) then
        result = "0"
      elseif redis.call("set", ARGV[6] .. task, "1", "EX", ARGV[7], "NX") then
        result = "1"
      else
        redis.call("expire", ARGV[6] .. task, ARGV[7])
        result = "2"
      end
      out[#out + 1] = result .. "\0" .. task .. "\0" .. parent .. "\0" .. tostring(message.message_id)
    end
  end
end
out[1] = table.concat(data, "\0")
return out
