-- Add or correct events in per-entity window state, invalidating the tiles they touch.
-- Per entity three keys (one hash tag, so one cluster slot):
--   KEYS[3e+1] events  sorted set: member = 2-byte id length .. id .. packed event, score = event µs
--   KEYS[3e+2] ids     hash: event id -> its current member (identity: entity keys + event id)
--   KEYS[3e+3] tiles   hash: "<level>:<k>" -> cached tile partials (JSON), "_gen" -> write
--                      generation (starts at the server clock in ns, +1 per changing write)
-- ARGV[1]: cutoff score (µs): events at or before it can no longer be in a window (-1: keep all)
-- ARGV[2]: milliseconds a key lives after its newest event (0: no expiry, for lifetime windows)
-- ARGV[3]: milliseconds to add to expiries: 0, or (wall clock - `at`) when replaying as of `at`
-- ARGV[4]: number of tile levels L, ARGV[5 .. 4+L]: their sizes in µs
-- then for each entity: a count c, its c ids, then c pairs (score, member) in the ids' order.
-- Ids are unique per entity within one call: the client keeps the last version of each id
-- (`WindowState.write`), so this script never orders versions itself. The layout lets the
-- common case (every id new) hand ARGV ranges to HMGET and ZADD as they are (`unpack`), with
-- no Lua table per event but HSET's (id, member) pairs: in Lua, building tables costs more
-- than the commands (bench/push_script.py measures the script against its argument floor).
-- An id seen with the same member is a re-delivery: nothing changes. An id seen with another
-- member is a correction: the old version leaves (its tiles are invalidated), the new one
-- enters. Every tile an added or removed event falls in is deleted from the cache and the
-- generation bumped, so a reader can never keep a tile computed from older events.
-- Returns the number of new event ids.
pcall(redis.replicate_commands)  -- effects replication (the default since 5.0): TIME below
local cutoff = tonumber(ARGV[1])
local life_ms = tonumber(ARGV[2])
local shift_ms = tonumber(ARGV[3])
local levels = tonumber(ARGV[4])
local sizes = {}
for l = 1, levels do
  sizes[l] = tonumber(ARGV[4 + l])
end
local at = 5 + levels
local added = 0

-- the tile fields an event at `score` falls in, gathered per entity (one HDEL at the end:
-- events of one entity share most of their coarser tiles)
-- Scores are gathered per entity, then each level's tiles are named once: for a level whose
-- tiles between the entity's first and last score are few, the whole range (a superset:
-- an extra tile only costs a recompute); otherwise tile by tile.
local function touch(scores, score)
  scores[#scores + 1] = score
end

local function touched_fields(scores)
  local fields = {}
  local n = #scores
  if n == 0 then
    return fields
  end
  local low, high = scores[1], scores[1]
  for i = 2, n do
    local s = scores[i]
    if s < low then low = s end
    if s > high then high = s end
  end
  for l = 1, levels do
    local size = sizes[l]
    local first, last = math.floor((low - 1) / size), math.floor((high - 1) / size)
    if last - first < 2 * n then
      for k = first, last do
        fields[#fields + 1] = (l - 1) .. ':' .. string.format('%d', k)
      end
    else
      local seen = {}
      for i = 1, n do
        local k = math.floor((scores[i] - 1) / size)
        if not seen[k] then
          seen[k] = true
          fields[#fields + 1] = (l - 1) .. ':' .. string.format('%d', k)
        end
      end
    end
  end
  return fields
end

local function invalidate(tkey, scores)
  local list = touched_fields(scores)
  for c = 1, #list, 4000 do
    redis.call('HDEL', tkey, unpack(list, c, math.min(c + 3999, #list)))
  end
end

local function id_of(member)
  local n = string.byte(member, 1) * 256 + string.byte(member, 2)
  return string.sub(member, 3, 2 + n)
end

-- ARGV ranges are handed to commands in chunks: `unpack` is bounded by Lua's C stack (8000)
local function call_range(command, key, first, last, step)
  for c = first, last, step do
    redis.call(command, key, unpack(ARGV, c, math.min(c + step - 1, last)))
  end
end

for e = 0, #KEYS / 3 - 1 do
  local zkey, hkey, tkey = KEYS[3 * e + 1], KEYS[3 * e + 2], KEYS[3 * e + 3]
  local count = tonumber(ARGV[at])
  local ids_at, pairs_at = at + 1, at + 1 + count  -- ids: ARGV[ids_at + i - 1], i = 1..count
  at = pairs_at + 2 * count
  local changed = false
  -- tiles to name only when some are cached (beyond `_gen`): an entity nobody read since
  -- its last write, the usual case while events stream in, gathers no scores at all
  local cached = redis.call('HLEN', tkey) > 1
  local touched = {}
  local olds
  if count <= 1000 then
    olds = redis.call('HMGET', hkey, unpack(ARGV, ids_at, ids_at + count - 1))
  else
    olds = {}
    for c = 0, count - 1, 1000 do
      local part = redis.call('HMGET', hkey, unpack(ARGV, ids_at + c, ids_at + math.min(c + 999, count - 1)))
      for i = 1, #part do
        olds[c + i] = part[i]
      end
    end
  end
  local known = false
  for i = 1, count do
    if olds[i] then
      known = true
      break
    end
  end
  if not known then
    -- every id is new (a stream's usual case): the pairs go to ZADD as sent
    call_range('ZADD', zkey, pairs_at, pairs_at + 2 * count - 1, 2000)
    local hset = {}
    for i = 1, count do
      hset[2 * i - 1] = ARGV[ids_at + i - 1]
      hset[2 * i] = ARGV[pairs_at + 2 * i - 1]
    end
    for c = 1, 2 * count, 2000 do
      redis.call('HSET', hkey, unpack(hset, c, math.min(c + 1999, 2 * count)))
    end
    if cached then
      for i = 1, count do
        touch(touched, tonumber(ARGV[pairs_at + 2 * i - 2]))
      end
    end
    added = added + count
    changed = count > 0
  else
    local zadd, hset, zrem = {}, {}, {}
    local nz, nh, nr = 0, 0, 0
    for i = 1, count do
      local id = ARGV[ids_at + i - 1]
      local score, member = ARGV[pairs_at + 2 * i - 2], ARGV[pairs_at + 2 * i - 1]
      local old = olds[i]
      if old ~= member then
        if old then
          local old_score = redis.call('ZSCORE', zkey, old)
          nr = nr + 1
          zrem[nr] = old
          if old_score and cached then
            touch(touched, tonumber(old_score))
          end
        else
          added = added + 1
        end
        zadd[nz + 1], zadd[nz + 2] = score, member
        hset[nh + 1], hset[nh + 2] = id, member
        nz, nh = nz + 2, nh + 2
        if cached then
          touch(touched, tonumber(score))
        end
        changed = true
      end
    end
    for c = 1, nr, 2000 do
      redis.call('ZREM', zkey, unpack(zrem, c, math.min(c + 1999, nr)))
    end
    for c = 1, nz, 2000 do
      redis.call('ZADD', zkey, unpack(zadd, c, math.min(c + 1999, nz)))
    end
    for c = 1, nh, 2000 do
      redis.call('HSET', hkey, unpack(hset, c, math.min(c + 1999, nh)))
    end
  end
  if cutoff >= 0 then
    local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
    if #gone > 0 then
      local ids = {}
      for i, member in ipairs(gone) do
        ids[i] = id_of(member)
      end
      redis.call('HDEL', hkey, unpack(ids))
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
      changed = true
    end
  end
  if changed then
    -- nothing cached but the generation (an entity nobody read since its last write, the
    -- usual case while events stream in): no tile to name, so none is computed
    if cached then
      invalidate(tkey, touched)
    end
    if redis.call('HINCRBY', tkey, '_gen', 1) == 1 then
      -- a new state starts from the server clock, not 1: a reader remembering an expired
      -- state's generation can never mistake a re-created one for it
      local now = redis.call('TIME')
      redis.call('HSET', tkey, '_gen', now[1] .. string.format('%06d', tonumber(now[2])) .. '000')
    end
  end
  -- with nothing pruned and no expiry (lifetime windows) the set cannot have emptied
  -- (count >= 1 ids now have a member each): no need to look at its newest event
  local newest = {true, true}
  if cutoff >= 0 or life_ms > 0 then
    newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  end
  if not newest[2] then
    redis.call('DEL', zkey, hkey, tkey)
  elseif life_ms > 0 then
    local expire = math.floor(tonumber(newest[2]) / 1000) + life_ms + shift_ms
    redis.call('PEXPIREAT', zkey, expire)
    redis.call('PEXPIREAT', hkey, expire)
    redis.call('PEXPIREAT', tkey, expire)
  end
end
return added
