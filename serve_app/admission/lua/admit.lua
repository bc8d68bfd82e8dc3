-- Admit one request of one tenant, atomically: sliding-window request limit, token
-- limit (1-second buckets over 60 s), monthly budget with reserve-then-settle.
-- Every key carries the tenant's hash tag {t}, so the script touches one slot.
--
-- KEYS[1] requests  ZSET  member = request id, score = admission time (ms)
-- KEYS[2] tokens    HASH  field = second, value = tokens reserved/settled in that second
-- KEYS[3] month     HASH  settled_micro, requests, tokens (this calendar month, UTC)
-- KEYS[4] reserved  STRING total micro-USD reserved by requests in flight
-- KEYS[5] resv      ZSET  member = request id, score = reservation expiry (ms)
-- KEYS[6] resvdata  HASH  field = request id, value = "tokens:second:amount_micro"
-- KEYS[7] outhist   HASH  field = model id, value = the tenant's mean output tokens
-- ARGV: now_ms (0: use Redis's clock), request_id, rpm_limit, tpm_limit, budget_micro, tokens, amount_micro,
--       reserve (1: reserve tokens and spend; 0: count the request only), ttl_ms
-- Returns {1, requests_in_window, tokens_in_window, settled_micro, reserved_micro,
--          outhist (flat field/value list: the tenant's output history, all replicas')}
--      or {0, code, retry_after_ms}   (retry_after_ms = -1: waiting cannot help)
local now = tonumber(ARGV[1])
if now == 0 then
  -- Redis's own clock: one clock for every ingress replica, whatever machine it runs on.
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local id = ARGV[2]
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local amount = tonumber(ARGV[7])
local reserve = ARGV[8] == '1'
local ttl = tonumber(ARGV[9])
local window_ms = 60000
local second = math.floor(now / 1000)

-- 1. Release reservations of requests that died (expired without a settle).
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
for _, rid in ipairs(expired) do
  local data = redis.call('HGET', KEYS[6], rid)
  if data then
    local t, s, a = string.match(data, '^(%d+):(%d+):(%d+)$')
    redis.call('DECRBY', KEYS[4], a)
    if tonumber(s) > second - 60 then
      redis.call('HINCRBY', KEYS[2], s, -tonumber(t))
    end
    redis.call('HDEL', KEYS[6], rid)
  end
  redis.call('ZREM', KEYS[5], rid)
end

-- 2. Requests: a true sliding window of the last 60 s.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window_ms)
local count = redis.call('ZCARD', KEYS[1])
if count >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 'rate_limited', tonumber(oldest[2]) + window_ms - now}
end

-- 3. Tokens: the 60 one-second buckets before now (older ones are dropped).
local buckets = redis.call('HGETALL', KEYS[2])
local used = 0
local live = {}
for i = 1, #buckets, 2 do
  local s = tonumber(buckets[i])
  if s <= second - 60 then
    redis.call('HDEL', KEYS[2], buckets[i])
  else
    local v = tonumber(buckets[i + 1])
    used = used + v
    table.insert(live, {s, v})
  end
end
if reserve and used + tokens > tpm then
  if tokens > tpm then
    return {0, 'tokens_limited', -1}
  end
  -- Wait until enough of the oldest buckets leave the window.
  table.sort(live, function(x, y) return x[1] < y[1] end)
  local excess = used + tokens - tpm
  local wait = -1
  for _, b in ipairs(live) do
    excess = excess - b[2]
    if excess <= 0 then
      wait = (b[1] + 61) * 1000 - now
      break
    end
  end
  return {0, 'tokens_limited', wait}
end

-- 4. Budget: settled this month + reserved in flight + this request's worst case.
local settled = tonumber(redis.call('HGET', KEYS[3], 'settled_micro') or '0')
local reserved = tonumber(redis.call('GET', KEYS[4]) or '0')
if reserve and settled + reserved + amount > budget then
  return {0, 'budget_exceeded', -1}
end

-- 5. Admit: count the request; reserve its tokens and worst-case spend.
redis.call('ZADD', KEYS[1], now, id)
redis.call('PEXPIRE', KEYS[1], window_ms + 1000)
if reserve then
  redis.call('HINCRBY', KEYS[2], second, tokens)
  redis.call('PEXPIRE', KEYS[2], window_ms + 2000)
  redis.call('INCRBY', KEYS[4], amount)
  redis.call('ZADD', KEYS[5], now + ttl, id)
  redis.call('HSET', KEYS[6], id, tokens .. ':' .. second .. ':' .. amount)
  used = used + tokens
  reserved = reserved + amount
end
local history = {}
if KEYS[7] then history = redis.call('HGETALL', KEYS[7]) end
return {1, count + 1, used, settled, reserved, history}
