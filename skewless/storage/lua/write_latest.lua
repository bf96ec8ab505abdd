-- Write packed feature values only where they are not older than what is stored.
-- KEYS[i]: the online key of one entity in one group version.
-- ARGV[2i-1]: the packed value (its bytes 2..35 are the sortable event/created header).
-- ARGV[2i]: absolute expiry in unix milliseconds, or 0 for no expiry.
-- Returns {written, skipped}. Atomic per call, so racing writers cannot interleave a
-- read-compare-write: whichever arrives last, the newest event time stays.
local written, skipped = 0, 0
for i, key in ipairs(KEYS) do
  local value = ARGV[2 * i - 1]
  local expire_at = tonumber(ARGV[2 * i])
  local old = redis.call('GET', key)
  if old and string.sub(old, 2, 35) > string.sub(value, 2, 35) then
    skipped = skipped + 1
  else
    if expire_at > 0 then
      redis.call('SET', key, value, 'PXAT', expire_at)
    else
      redis.call('SET', key, value)
    end
    written = written + 1
  end
end
return {written, skipped}
