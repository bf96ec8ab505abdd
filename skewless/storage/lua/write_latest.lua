-- Write packed feature values only where they are not older than what is stored.
-- KEYS[i]: the online key of one entity in one group version.
-- ARGV[2i-1]: the packed value (its bytes 2..35 are the sortable event/created header).
-- ARGV[2i]: absolute expiry in unix milliseconds, or 0 for no expiry.
-- Returns {written, skipped}. Atomic per call, so racing writers cannot interleave a
-- read-compare-write: whichever arrives last, the newest event time stays.
-- One MGET reads every stored value and one MSET writes every winner (clearing any old
-- expiry); only expiring values need a call of their own. Per-key redis.call overhead is
-- what a key-by-key guard spends its time on.
-- Callers keep #KEYS <= 2000 so unpack() stays far below Lua's C stack limit (8000).
local olds = redis.call('MGET', unpack(KEYS))
local written, skipped = 0, 0
local winners = {}
local expiring = {}
for i, key in ipairs(KEYS) do
  local value = ARGV[2 * i - 1]
  local old = olds[i]
  if old and string.sub(old, 2, 35) > string.sub(value, 2, 35) then
    skipped = skipped + 1
  else
    winners[#winners + 1] = key
    winners[#winners + 1] = value
    if tonumber(ARGV[2 * i]) > 0 then
      expiring[#expiring + 1] = i
    end
    written = written + 1
  end
end
if #winners > 0 then
  redis.call('MSET', unpack(winners))
  for _, i in ipairs(expiring) do
    redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
  end
end
return {written, skipped}
