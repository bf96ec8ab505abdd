-- Add events to per-entity sorted sets (the online window state) and drop expired ones.
-- KEYS[i]: the events key of one entity in one window group version.
-- ARGV[1]: cutoff score (microseconds): events at or before it can no longer be in a window.
-- ARGV[2]: longest window in milliseconds (a key expires that long after its newest event).
-- ARGV[3]: milliseconds to add to expiries: 0, or (wall clock - `at`) when replaying as of `at`.
-- ARGV[4..]: for each key, a count c, then c pairs (score, member).
-- Members are whole packed events, so re-delivering an event adds nothing (exactly-once
-- effect); a late event lands in score order like any other.
local cutoff = ARGV[1]
local window_ms = tonumber(ARGV[2])
local shift_ms = tonumber(ARGV[3])
local at = 4
local added = 0
for _, key in ipairs(KEYS) do
  local count = tonumber(ARGV[at])
  at = at + 1
  for j = 0, count - 1 do
    added = added + redis.call('ZADD', key, ARGV[at + 2 * j], ARGV[at + 2 * j + 1])
  end
  at = at + 2 * count
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then
    redis.call('PEXPIREAT', key, math.floor(tonumber(newest[2]) / 1000) + window_ms + shift_ms)
  end
end
return added
