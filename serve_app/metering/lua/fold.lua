-- Fold a batch of stream entries into window totals and acknowledge them, atomically.
-- If the process dies before this runs, the entries stay pending and are read again;
-- after it, they are folded and acknowledged together: never both, never neither.
-- Each entry is a batch of meters, deduplicated by batch id, so a batch appended twice
-- (a spool replay after an XADD that did land) is counted once.
--
-- A batch id is remembered `dedup_ms` (horizons.FOLD_DEDUP_S): the spool never replays a
-- file older than that less a margin (horizons.SPOOL_MAX_AGE_S), so a replayed copy of a
-- batch that did land always finds its id here.
--
-- KEYS[1] stream   KEYS[2] seen ZSET (batch id -> time, kept `dedup_ms`)
-- KEYS[3] open HASH ("tenant|event|start|window_s|grace_s" -> value: windows.open_field;
-- a window keeps the shape it was folded under when the configuration changes)
-- KEYS[4] customers HASH (tenant -> cus_)
-- KEYS[5] tenants HASH ("tenant|field" -> value: billed, credited, meters, failed)
-- ARGV[1] group  ARGV[2] window_s  ARGV[3] grace_s  ARGV[4] dedup_ms  ARGV[5] n_entries
-- ARGV[6] billed event name  ARGV[7] tokens event name
-- then per entry: entry_id, batch_id ('' = acknowledge only), n_groups, and per group 8
-- values (the entry's summary, see entry.py): tenant, customer, ended_s, billable,
-- failed, billed_micro, tokens, credit_micro. Returns the number of meters folded.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group = ARGV[1]
local window_s = tonumber(ARGV[2])
local grace_s = tonumber(ARGV[3])
local dedup_ms = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local billed_event, tokens_event = ARGV[6], ARGV[7]
local open_start = math.floor(math.floor(now / 1000) / window_s) * window_s
local shape = '|' .. ARGV[2] .. '|' .. ARGV[3]
local folded = 0
local ids = {}
-- Sums per hash field for the whole call, written once each at the end.
local open, tenants, customers = {}, {}, {}
local function add(tbl, field, value)
  tbl[field] = (tbl[field] or 0) + tonumber(value)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - dedup_ms)
local pos = 8
for _ = 1, n do
  local entry_id, batch_id, n_groups = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  table.insert(ids, entry_id)
  if batch_id ~= '' and redis.call('ZADD', KEYS[2], 'NX', now, batch_id) == 1 then
    for b = pos, pos + (n_groups - 1) * 8, 8 do
      local tenant = ARGV[b]
      local billable, failed = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
      if billable > 0 then
        local start = math.floor(tonumber(ARGV[b + 2]) / window_s) * window_s
        if (start + window_s + grace_s) * 1000 <= now then
          start = open_start  -- late: its window may be sent already; bill it in the open one
        end
        add(open, tenant .. '|' .. billed_event .. '|' .. start .. shape, ARGV[b + 5])
        add(open, tenant .. '|' .. tokens_event .. '|' .. start .. shape, ARGV[b + 6])
        customers[tenant] = ARGV[b + 1]
        add(tenants, tenant .. '|billed', ARGV[b + 5])
        add(tenants, tenant .. '|credited', ARGV[b + 7])
        add(tenants, tenant .. '|meters', billable)
      end
      if failed > 0 then
        add(tenants, tenant .. '|failed', failed)
      end
      folded = folded + billable + failed
    end
  end
  pos = pos + n_groups * 8
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
