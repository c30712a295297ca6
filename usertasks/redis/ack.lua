-- usertasks: acknowledge many messages of one consumer in one call.
--
-- KEYS[1]: Dramatiq's namespace.
-- ARGV: worker id, time (ms), queue name, then the Redis ids of the messages.
--
-- What the "ack" command of Dramatiq's dispatch.lua does (the worker's heartbeat; each message
-- leaves the worker's set of unacknowledged messages and, if it was in it, the queue's hash),
-- for many messages at once; tests/redis/test_mirrors.py checks it against the installed
-- Dramatiq.

local namespace, worker_id, queue_name = KEYS[1], ARGV[1], ARGV[3]
redis.call("zadd", namespace .. ":__heartbeats__", ARGV[2], worker_id)
local acks = namespace .. ":__acks__." .. worker_id .. "." .. queue_name
local messages = namespace .. ":" .. queue_name .. ".msgs"
for i = 4, #ARGV do
  if redis.call("srem", acks, ARGV[i]) > 0 then
    redis.call("hdel", messages, ARGV[i])
  end
end
