-- Close every window whose end + grace has passed: freeze its value and deterministic
-- identifier into the outbox and add it to the ledger, atomically. A window is either
-- still open or in the outbox (then sent), never both, never lost.
--
-- KEYS[1] open HASH  KEYS[2] customers HASH  KEYS[3] outbox HASH (identifier -> entry)
-- KEYS[4] ledger HASH ("customer|event" -> total closed)
-- ARGV: per candidate window (from HKEYS open, parsed by the caller, `windows.py`) six
-- values: field, identifier, due_s (start + its own length + grace), tenant, event,
-- start. The caller parses and names; Redis's clock decides what is due.
-- Returns the number of windows closed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local closed = 0
for i = 1, #ARGV, 6 do
  local field, ident, due = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local tenant, event, start = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if due * 1000 <= now then
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
