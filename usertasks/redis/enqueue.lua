-- usertasks: put many messages on their queues in one call, and wake the queues' idle consumers.
--
-- KEYS[1]: the broker's namespace.
-- ARGV: a queue name and how many messages follow for it, then the Redis id and the data of
-- each; again for the next queue.
--
-- For each message this does what the "enqueue" command of Dramatiq's dispatch.lua does (the
-- message stored in the queue's hash under its Redis id, the id pushed on the queue's list);
-- tests/redis/test_mirrors.py checks it against the installed Dramatiq.  A push onto an empty
-- queue also publishes on the queue's wake channel (usertasks.redis.wakeup).

local i = 1
while i < #ARGV do
  local queue = KEYS[1] .. ":" .. ARGV[i]
  local messages = queue .. ".msgs"
  local idle = redis.call("llen", queue) == 0
  local last = i + 1 + 2 * tonumber(ARGV[i + 1])
  for j = i + 2, last, 2 do
    redis.call("hset", messages, ARGV[j], ARGV[j + 1])
    redis.call("rpush", queue, ARGV[j])
  end
  if idle then
    redis.call("publish", queue .. ".wake", "")
  end
  i = last + 1
end
