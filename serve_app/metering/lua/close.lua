-- Close every window whose end + grace has passed: freeze its value and deterministic
-- identifier into the outbox and add it to the ledger, atomically. A window is either
-- still open or in the outbox (then sent), never both, never lost.
--
-- KEYS[1] open HASH  KEYS[2] customers HASH  KEYS[3] outbox HASH (identifier -> entry)
-- KEYS[4] ledger HASH ("customer|event" -> total closed)
-- ARGV[1] window_s  ARGV[2] grace_s  then pairs (field, identifier) for candidate windows
-- computed by the caller from HKEYS open (the identifier is a hash the caller computes).
-- Returns the number of windows closed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_s = tonumber(ARGV[1])
local grace_s = tonumber(ARGV[2])
local closed = 0
for i = 3, #ARGV, 2 do
  local field, ident = ARGV[i], ARGV[i + 1]
  local tenant, event, start = string.match(field, '^(.*)|([^|]+)|(%d+)$')
  if start and (tonumber(start) + window_s + grace_s) * 1000 <= now then
    local value = redis.call('HGET', KEYS[1], field)
    if value then
      redis.call('HDEL', KEYS[1], field)
      local customer = redis.call('HGET', KEYS[2], tenant)
      if tonumber(value) > 0 and customer then
        -- "customer|event|value|start|tenant": exact integers, no float encoding.
        local entry = customer .. '|' .. event .. '|' .. value .. '|' .. start .. '|' .. tenant
        redis.call('HSETNX', KEYS[3], ident, entry)
        redis.call('HINCRBY', KEYS[4], customer .. '|' .. event, value)
      end
      closed = closed + 1
    end
  end
end
return closed
