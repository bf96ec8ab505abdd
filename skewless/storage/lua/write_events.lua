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
-- (a field name is built only for a tile not seen yet: string building is most of the cost)
local seen = {}
local function touch(fields, score)
  for l = 1, levels do
    local k = math.floor((score - 1) / sizes[l])
    local level_seen = seen[l]
    if level_seen[k] == nil then
      level_seen[k] = true
      fields[(l - 1) .. ':' .. string.format('%d', k)] = true
    end
  end
end

local function invalidate(tkey, fields)
  local list = {}
  for field in pairs(fields) do
    list[#list + 1] = field
    if #list == 4000 then
      redis.call('HDEL', tkey, unpack(list))
      list = {}
    end
  end
  if #list > 0 then
    redis.call('HDEL', tkey, unpack(list))
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
  local touched = {}
  for l = 1, levels do
    seen[l] = {}
  end
  for j = 0, count - 1 do
    local score, id, member = ARGV[at + 3 * j], ARGV[at + 3 * j + 1], ARGV[at + 3 * j + 2]
    local old = redis.call('HGET', hkey, id)
    if old ~= member then
      if old then
        local old_score = redis.call('ZSCORE', zkey, old)
        redis.call('ZREM', zkey, old)
        if old_score then
          touch(touched, tonumber(old_score))
        end
      else
        added = added + 1
      end
      redis.call('ZADD', zkey, score, member)
      redis.call('HSET', hkey, id, member)
      touch(touched, tonumber(score))
      changed = true
    end
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
    invalidate(tkey, touched)
    if redis.call('HEXISTS', tkey, '_gen') == 1 then
      redis.call('HINCRBY', tkey, '_gen', 1)
    else
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
