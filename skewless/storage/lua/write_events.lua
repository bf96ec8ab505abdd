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
-- then for each entity: a count c, then c triples (score, id, member).
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

for e = 0, #KEYS / 3 - 1 do
  local zkey, hkey, tkey = KEYS[3 * e + 1], KEYS[3 * e + 2], KEYS[3 * e + 3]
  local count = tonumber(ARGV[at])
  at = at + 1
  local changed = false
  -- tiles to name only when some are cached (beyond `_gen`): an entity nobody read since
  -- its last write, the usual case while events stream in, gathers no scores at all
  local cached = redis.call('HLEN', tkey) > 1
  local touched = {}
  -- of several versions of one id in this batch only the last counts (later rows win)
  local last = {}
  local order = {}
  for j = 0, count - 1 do
    local id = ARGV[at + 3 * j + 1]
    if last[id] == nil then
      order[#order + 1] = id
    end
    last[id] = j
  end
  -- one HMGET, ZADD, HSET per entity (chunked), not one call per event
  local olds = {}
  for c = 1, #order, 1000 do
    local part = redis.call('HMGET', hkey, unpack(order, c, math.min(c + 999, #order)))
    for i, value in ipairs(part) do
      olds[c + i - 1] = value
    end
  end
  local zadd, hset, zrem = {}, {}, {}
  for i, id in ipairs(order) do
    local j = last[id]
    local score, member = ARGV[at + 3 * j], ARGV[at + 3 * j + 2]
    local old = olds[i]
    if old ~= member then
      if old then
        local old_score = redis.call('ZSCORE', zkey, old)
        zrem[#zrem + 1] = old
        if old_score and cached then
          touch(touched, tonumber(old_score))
        end
      else
        added = added + 1
      end
      zadd[#zadd + 1] = score
      zadd[#zadd + 1] = member
      hset[#hset + 1] = id
      hset[#hset + 1] = member
      if cached then
        touch(touched, tonumber(score))
      end
      changed = true
    end
  end
  for c = 1, #zrem, 2000 do
    redis.call('ZREM', zkey, unpack(zrem, c, math.min(c + 1999, #zrem)))
  end
  for c = 1, #zadd, 2000 do
    redis.call('ZADD', zkey, unpack(zadd, c, math.min(c + 1999, #zadd)))
  end
  for c = 1, #hset, 2000 do
    redis.call('HSET', hkey, unpack(hset, c, math.min(c + 1999, #hset)))
  end
  at = at + 3 * count
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
  local newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
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
