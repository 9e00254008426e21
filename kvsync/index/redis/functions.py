"""The Redis function library the backend loads into every master (``FUNCTION LOAD REPLACE``).

Functions, not ``EVAL``: a library is loaded once per node and survives a client's restart, and
Redis 7 lets a function flagged ``allow-cross-slot-keys`` read keys of several slots on the node
it runs on, so one lookup call per node reads every endpoint that node holds. Each function runs
atomically; a writer's call touches the keys of one endpoint only (one slot: ``layout``), so a
batch and its ``seq`` are in together or not at all.

* ``kvsync_claim(meta; ident)`` → ``{gen, seq, ctxs}``: a writer takes an endpoint. The
  generation goes up, so calls of any earlier writer are refused from now on. When ``ident`` (the
  incarnation: the pod's uid and restart count, model, adapter) differs from the stored one, the
  stored blocks belong to another incarnation: they are dropped and ``seq`` is none.
* ``kvsync_apply(meta, data...; gen, expected, seq, held, ctxs, [clear, plain, other, dels]...)``:
  a batch (or several of one endpoint, merged). Refused with ``{"fenced", gen}`` when the
  generation moved on, with ``{"behind", seq}`` when the stored ``seq`` is below ``expected``
  (a failover lost writes this writer had made: it rewrites the endpoint from its own state),
  ``expected`` ``*`` skips that check (a rewrite, a drop). Per data hash: ``clear`` ``1`` drops
  it first, ``plain`` are 16-byte records (key, value of a plain block), ``other`` 18-byte ones
  (key, value with its copy mask), ``dels`` 8-byte keys (``layout``). Values are final
  states, not increments, so applying a call twice leaves what applying it once does.
* ``kvsync_release(meta; gen)``: the owner stops following the endpoint (a clean shutdown).
* ``kvsync_copy_bit(copies; field)`` → the copy's bit, allocated on first use.

Leases: a claim and every apply set the endpoint's ``lease`` (15 s ahead, on the server's clock)
and push its keys' expiry an hour ahead; the owner's flusher renews every few seconds even when
nothing changed. A lookup skips an endpoint whose lease has passed: nobody follows its events, so
its blocks are not known to be true (a pod deleted while its owner was down, an owner that
crashed and has not resumed yet). Redis itself deletes an endpoint nobody renewed for an hour.
* ``kvsync_match(; keys, data...)`` (read-only) → per data hash ``{run, mask, n, ...}``: the
  leading query blocks its endpoint holds (``SMISMEMBER`` on the held set, in chunks of 16, 64,
  256... blocks: most endpoints stop early) and, for the masks other than the plain copy's among
  them, how many blocks have each (values read only for blocks in the odd set).
"""

from typing import Final

VERSION: Final = "4"  # bump with any change below: writers check it at open

LIBRARY: Final = (
    """#!lua name=kvsync

-- Loading a library may not touch Lua's globals (string, unpack, ...): only calls may.
local BATCH = 4000  -- arguments per call (Lua's C stack takes about 8000)
local LEASE_MS = 15000  -- the owner renews every few seconds; lookups skip an endpoint past it
local KEEP_MS = 3600000  -- an endpoint no writer renewed for an hour is deleted by Redis

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The keys of one (endpoint, context), from any of them: the data hash (d), the set of the
-- blocks held (s: what lookups read, integers back, no value to copy) and the set of the blocks
-- held in a copy other than the plain one (o: what a lookup reads values for).
local function keys_of(key)
  local head, ctx = string.match(key, '^(.*):[dso]:([^:]*)$')
  return head .. ':d:' .. ctx, head .. ':s:' .. ctx, head .. ':o:' .. ctx
end

local function batched(command, key, list)
  for i = 1, #list, BATCH do
    redis.call(command, key, unpack(list, i, math.min(#list, i + BATCH - 1)))
  end
end

local function wipe(meta)
  local ctxs = redis.call('HGET', meta, 'ctxs')
  if ctxs then
    local head = string.sub(meta, 1, -2)
    for ctx in string.gmatch(ctxs, '%S+') do
      redis.call('UNLINK', keys_of(head .. 'd:' .. ctx))
    end
  end
end

-- The owner is alive: lookups may answer from this endpoint for LEASE_MS, and its keys live on.
local function renew(meta, lease)
  redis.call('HSET', meta, 'lease', lease)
  redis.call('PEXPIRE', meta, KEEP_MS)
  local ctxs = redis.call('HGET', meta, 'ctxs')
  if ctxs then
    local head = string.sub(meta, 1, -2)
    for ctx in string.gmatch(ctxs, '%S+') do
      local data, held, odd = keys_of(head .. 'd:' .. ctx)
      redis.call('PEXPIRE', data, KEEP_MS)
      redis.call('PEXPIRE', held, KEEP_MS)
      redis.call('PEXPIRE', odd, KEEP_MS)
    end
  end
end

local function claim(keys, args)
  local meta = keys[1]
  local ident = redis.call('HGET', meta, 'ident')
  local gen = redis.call('HINCRBY', meta, 'gen', 1)
  if ident ~= args[1] then
    wipe(meta)
    redis.call('HSET', meta, 'ident', args[1], 'seq', '', 'held', 0, 'ctxs', '')
  end
  renew(meta, now_ms() + LEASE_MS)
  local stored = redis.call('HMGET', meta, 'seq', 'ctxs')
  return {gen, stored[1], stored[2]}
end

-- The owner stops following the endpoint (a clean shutdown): lookups skip it from now on.
local function release(keys, args)
  if redis.call('HGET', keys[1], 'gen') == args[1] then redis.call('HSET', keys[1], 'lease', 0) end
  return 1
end

-- Split a blob of fixed-size records: the keys (first 8 bytes) and the fields for HSET.
local function records(blob, width)
  local sub = string.sub
  local step = 8 + width
  local members, pairs_ = {}, {}
  for i = 1, #blob, step do
    local key = sub(blob, i, i + 7)
    members[#members + 1] = key
    pairs_[#pairs_ + 1] = key
    pairs_[#pairs_ + 1] = sub(blob, i + 8, i + step - 1)
  end
  return members, pairs_
end

local function apply(keys, args)
  local meta = keys[1]
  local gen = redis.call('HGET', meta, 'gen')
  if gen ~= args[1] then return {'fenced', gen or ''} end
  if args[2] ~= '*' then
    local stored = tonumber(redis.call('HGET', meta, 'seq')) or -1
    local expected = tonumber(args[2]) or -1
    if stored < expected then return {'behind', tostring(stored)} end
  end
  for k = 2, #keys do
    local data, held, odd = keys_of(keys[k])
    local base = 4 * k - 2
    if args[base] == '1' then redis.call('UNLINK', data, held, odd) end
    local has_odd = redis.call('EXISTS', odd) == 1
    local plain, plain_fields = records(args[base + 1], 8)
    if #plain > 0 then
      batched('HSET', data, plain_fields)
      batched('SADD', held, plain)
      if has_odd then batched('SREM', odd, plain) end
    end
    local other, other_fields = records(args[base + 2], 10)
    if #other > 0 then
      batched('HSET', data, other_fields)
      batched('SADD', held, other)
      batched('SADD', odd, other)
      has_odd = true
    end
    local gone = records(args[base + 3], 0)
    if #gone > 0 then
      batched('HDEL', data, gone)
      batched('SREM', held, gone)
      if has_odd then batched('SREM', odd, gone) end
    end
  end
  redis.call('HSET', meta, 'seq', args[3], 'held', args[4], 'ctxs', args[5])
  renew(meta, now_ms() + LEASE_MS)
  return {'ok', args[3]}
end

local function copy_bit(keys, args)
  local copies = keys[1]
  if redis.call('HLEN', copies) == 0 then redis.call('HSET', copies, 'GPU|0', 0) end
  local bit = redis.call('HGET', copies, args[1])
  if bit then return tonumber(bit) end
  bit = redis.call('HLEN', copies)
  if bit >= 16 then return redis.error_reply('kvsync: too many copy kinds') end
  redis.call('HSET', copies, args[1], bit)
  return bit
end

local function match(keys, args)
  local sub, byte, unpack = string.sub, string.byte, unpack
  local blob = args[1]
  local fields = {}
  for i = 1, #blob, 8 do fields[#fields + 1] = sub(blob, i, i + 7) end
  local total = #fields
  local now = now_ms()
  local out = {}
  for e = 2, #args do
    local data, held, odd = keys_of(args[e])
    local meta = string.match(data, '^(.*):d:') .. ':m'
    local run = 0
    local start, size = 1, 16
    if (tonumber(redis.call('HGET', meta, 'lease')) or 0) < now then
      start = total + 1  -- no live owner follows this endpoint: its blocks are not known true
    end
    while start <= total do
      local stop = math.min(total, start + size - 1)
      local hits = redis.call('SMISMEMBER', held, unpack(fields, start, stop))
      local whole = true
      for j = 1, #hits do
        if hits[j] == 0 then whole = false; break end
        run = run + 1
      end
      if not whole then break end
      start, size = stop + 1, math.min(size * 4, BATCH)
    end
    local reply = {run}
    if run > 0 and redis.call('SCARD', odd) > 0 then
      local counts = {}
      for i = 1, run, BATCH do
        local last = math.min(run, i + BATCH - 1)
        local flags = redis.call('SMISMEMBER', odd, unpack(fields, i, last))
        local named = {}
        for j = 1, #flags do
          if flags[j] == 1 then named[#named + 1] = fields[i + j - 1] end
        end
        if #named > 0 then
          local values = redis.call('HMGET', data, unpack(named))
          for j = 1, #values do
            local mask = byte(values[j], 9) + 256 * byte(values[j], 10)
            counts[mask] = (counts[mask] or 0) + 1
          end
        end
      end
      for mask, n in pairs(counts) do reply[#reply + 1] = mask; reply[#reply + 1] = n end
    end
    out[#out + 1] = reply
  end
  return out
end

local function version() return '"""
    + VERSION
    + """' end

redis.register_function('kvsync_claim', claim)
redis.register_function('kvsync_apply', apply)
redis.register_function('kvsync_copy_bit', copy_bit)
redis.register_function('kvsync_release', release)
redis.register_function{function_name = 'kvsync_match', callback = match,
                        flags = {'no-writes', 'allow-cross-slot-keys'}}
redis.register_function{function_name = 'kvsync_version', callback = version,
                        flags = {'no-writes'}}
"""
)
