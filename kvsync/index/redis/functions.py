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
* ``kvsync_apply(meta, data...; gen, expected, seq, held, ctxs, [clear, sets, dels]...)``:
  a batch (or several of one endpoint, merged). Refused with ``{"fenced", gen}`` when the
  generation moved on, with ``{"behind", seq}`` when the stored ``seq`` is below ``expected``
  (a failover lost writes this writer had made: it rewrites the endpoint from its own state),
  ``expected`` ``*`` skips that check (a rewrite, a drop). Per data hash: ``clear`` ``1`` drops
  it first, ``sets`` are 18-byte records (key, value), ``dels`` 8-byte keys. Values are final
  states, not increments, so applying a call twice leaves what applying it once does.
* ``kvsync_copy_bit(copies; field)`` → the copy's bit, allocated on first use.
* ``kvsync_match(; keys, data...)`` (read-only) → per data hash ``{run, mask, n, ...}``: the
  leading query blocks it holds and, for the masks other than the plain copy's among them, how
  many blocks have each. Reads in chunks of 16, 64, 256... blocks: most endpoints stop early.
"""

from typing import Final

LIBRARY_NAME: Final = "kvsync"
VERSION: Final = "1"  # bump with any change below: writers check it at open

LIBRARY: Final = (
    """#!lua name=kvsync

-- Loading a library may not touch Lua's globals (string, unpack, ...): only calls may.
local BATCH = 4000  -- fields per HSET / HDEL / HMGET call (Lua's C stack takes about 8000)

local function data_key(meta, ctx)
  return string.sub(meta, 1, -2) .. 'd:' .. ctx
end

local function wipe(meta)
  local ctxs = redis.call('HGET', meta, 'ctxs')
  if ctxs then
    for ctx in string.gmatch(ctxs, '%S+') do redis.call('UNLINK', data_key(meta, ctx)) end
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
  local stored = redis.call('HMGET', meta, 'seq', 'ctxs')
  return {gen, stored[1], stored[2]}
end

local function apply(keys, args)
  local sub, unpack = string.sub, unpack
  local meta = keys[1]
  local gen = redis.call('HGET', meta, 'gen')
  if gen ~= args[1] then return {'fenced', gen or ''} end
  if args[2] ~= '*' then
    local stored = tonumber(redis.call('HGET', meta, 'seq')) or -1
    local expected = tonumber(args[2]) or -1
    if stored < expected then return {'behind', tostring(stored)} end
  end
  for k = 2, #keys do
    local data, base = keys[k], 3 * k
    if args[base] == '1' then redis.call('UNLINK', data) end
    local sets = args[base + 1]
    local i, n = 1, #sets
    while i <= n do
      local fields, stop = {}, math.min(n, i + 18 * BATCH / 2 - 1)
      while i <= stop do
        fields[#fields + 1] = sub(sets, i, i + 7)
        fields[#fields + 1] = sub(sets, i + 8, i + 17)
        i = i + 18
      end
      redis.call('HSET', data, unpack(fields))
    end
    local dels = args[base + 2]
    i, n = 1, #dels
    while i <= n do
      local fields, stop = {}, math.min(n, i + 8 * BATCH - 1)
      while i <= stop do
        fields[#fields + 1] = sub(dels, i, i + 7)
        i = i + 8
      end
      redis.call('HDEL', data, unpack(fields))
    end
  end
  redis.call('HSET', meta, 'seq', args[3], 'held', args[4], 'ctxs', args[5])
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
  local out = {}
  for e = 2, #args do
    local data = args[e]
    local run, odd = 0, {}
    local start, size = 1, 16
    while start <= total do
      local stop = math.min(total, start + size - 1)
      local values = redis.call('HMGET', data, unpack(fields, start, stop))
      local whole = true
      for j = 1, #values do
        local v = values[j]
        if not v then whole = false; break end
        local mask = byte(v, 9) + 256 * byte(v, 10)
        if mask ~= 1 then odd[mask] = (odd[mask] or 0) + 1 end
        run = run + 1
      end
      if not whole then break end
      start, size = stop + 1, math.min(size * 4, BATCH)
    end
    local reply = {run}
    for mask, n in pairs(odd) do reply[#reply + 1] = mask; reply[#reply + 1] = n end
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
redis.register_function{function_name = 'kvsync_match', callback = match,
                        flags = {'no-writes', 'allow-cross-slot-keys'}}
redis.register_function{function_name = 'kvsync_version', callback = version,
                        flags = {'no-writes'}}
"""
)
