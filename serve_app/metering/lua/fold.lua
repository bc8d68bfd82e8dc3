-- Fold a batch of stream entries into window totals and acknowledge them, atomically.
-- If the process dies before this runs, the entries stay pending and are read again;
-- after it, they are folded and acknowledged together: never both, never neither.
-- Meters are deduplicated by meter id, so a meter written twice (a spool replay after
-- an XADD that did land) is counted once.
--
-- KEYS[1] stream   KEYS[2] seen ZSET (meter id -> time, kept `dedup_ms`)
-- KEYS[3] open HASH ("tenant|event|start" -> value)   KEYS[4] customers HASH (tenant -> cus_)
-- KEYS[5] tenants HASH ("tenant|field" -> value: billed, credited, meters, failed)
-- ARGV[1] group  ARGV[2] window_s  ARGV[3] grace_s  ARGV[4] dedup_ms  ARGV[5] n_entries
-- ARGV[6] billed event name  ARGV[7] tokens event name
-- then per entry 9 values: entry_id, meter_id, tenant, customer, ended_at_ms, billable,
-- billed_micro, tokens, credit_micro
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group = ARGV[1]
local window_s = tonumber(ARGV[2])
local grace_s = tonumber(ARGV[3])
local dedup_ms = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local billed_event, tokens_event = ARGV[6], ARGV[7]
local folded = 0
local ids = {}
-- Sums per hash field for the whole batch, written once each at the end: with ~100
-- tenants the hashes use Redis's compact encoding, where every HINCRBY is a scan.
local open, tenants, customers = {}, {}, {}
local function add(tbl, field, value)
  tbl[field] = (tbl[field] or 0) + tonumber(value)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dedup_ms)
for i = 0, n - 1 do
  local b = 8 + i * 9
  local entry_id, meter_id, tenant, customer = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local ended_ms = tonumber(ARGV[b + 4])
  local billable = ARGV[b + 5] == '1'
  table.insert(ids, entry_id)
  if meter_id ~= '' and redis.call('ZADD', KEYS[2], 'NX', now, meter_id) == 1 then
    folded = folded + 1
    if billable then
      local start = math.floor(math.floor(ended_ms / 1000) / window_s) * window_s
      if (start + window_s + grace_s) * 1000 <= now then
        start = math.floor(math.floor(now / 1000) / window_s) * window_s  -- late: open window
      end
      add(open, tenant .. '|' .. billed_event .. '|' .. start, ARGV[b + 6])
      add(open, tenant .. '|' .. tokens_event .. '|' .. start, ARGV[b + 7])
      customers[tenant] = customer
      add(tenants, tenant .. '|billed', ARGV[b + 6])
      add(tenants, tenant .. '|credited', ARGV[b + 8])
      add(tenants, tenant .. '|meters', 1)
    else
      add(tenants, tenant .. '|failed', 1)
    end
  end
end
for field, value in pairs(open) do
  redis.call('HINCRBY', KEYS[3], field, value)
end
for field, value in pairs(tenants) do
  redis.call('HINCRBY', KEYS[5], field, value)
end
for tenant, customer in pairs(customers) do
  redis.call('HSET', KEYS[4], tenant, customer)
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ids))
end
return folded
