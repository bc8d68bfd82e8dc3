-- Settle one admitted request to its verified figures, exactly once.
-- KEYS[1] tokens  KEYS[2] month (of the moment the request settled)  KEYS[3] reserved
-- KEYS[4] resv  KEYS[5] resvdata
-- KEYS[6] settled ZSET of settled request ids (score = time), trimmed to `dedup_ms`
-- KEYS[7] outhist HASH  field = model id, value = the tenant's mean output tokens (EWMA)
-- ARGV: now_ms (0: use Redis's clock), request_id, tokens (verified; 0 for a failed request),
--       billed_micro, age_ms (how long ago it settled: > 0 for a settle sent late, e.g.
--       queued during an outage), dedup_ms (how long a settled id is remembered),
--       model ('' : no observation), output_tokens (of a finished generation), ewma_weight
-- Returns 1 when settled now, 0 when this id was already settled (a retry).
local now = tonumber(ARGV[1])
if now == 0 then
  -- Redis's own clock: one clock for every ingress replica, whatever machine it runs on.
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local id = ARGV[2]
local tokens = tonumber(ARGV[3])
local billed = tonumber(ARGV[4])
local age = tonumber(ARGV[5] or '0')
local dedup = tonumber(ARGV[6] or '3600000')
local second = math.floor(now / 1000)
-- The second the request settled in: its verified tokens belong to the sliding window
-- only while that second is in it (a settle replayed after an outage does not fill the
-- current minute with tokens spent long ago).
local at_second = math.floor((now - age) / 1000)

redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - dedup)
if redis.call('ZSCORE', KEYS[6], id) then
  return 0
end
redis.call('ZADD', KEYS[6], now, id)
redis.call('PEXPIRE', KEYS[6], dedup)

local data = redis.call('HGET', KEYS[5], id)
if data then
  local t, s, a = string.match(data, '^(%d+):(%d+):(%d+)$')
  redis.call('DECRBY', KEYS[3], a)
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[4], id)
  if tonumber(s) > second - 60 then
    -- Move the reserved estimate to the verified count, in the bucket it was taken in.
    redis.call('HINCRBY', KEYS[1], s, tokens - tonumber(t))
  elseif tokens > 0 and at_second > second - 60 then
    redis.call('HINCRBY', KEYS[1], at_second, tokens)
  end
elseif tokens > 0 and at_second > second - 60 then
  -- The reservation had expired (released already), or Redis never held it (admitted
  -- by the fail-open limiter during an outage): count the verified tokens now.
  redis.call('HINCRBY', KEYS[1], at_second, tokens)
end
redis.call('PEXPIRE', KEYS[1], 62000)
-- The tenant's output history, shared by every ingress replica (predicts the next
-- request's output tokens); once per request id, like everything above.
local model = ARGV[7] or ''
local output = tonumber(ARGV[8] or '0')
if model ~= '' and output > 0 and KEYS[7] then
  local old = tonumber(redis.call('HGET', KEYS[7], model) or '')
  local weight = tonumber(ARGV[9] or '0.2')
  local mean = output
  if old then mean = old + weight * (output - old) end
  redis.call('HSET', KEYS[7], model, string.format('%.3f', mean))
  redis.call('PEXPIRE', KEYS[7], 30 * 86400000)
end
if billed > 0 or tokens > 0 then
  redis.call('HINCRBY', KEYS[2], 'settled_micro', billed)
  redis.call('HINCRBY', KEYS[2], 'tokens', tokens)
  redis.call('HINCRBY', KEYS[2], 'requests', 1)
  redis.call('PEXPIRE', KEYS[2], 40 * 86400000)
end
return 1
