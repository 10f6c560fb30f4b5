"""Every Lua script of the bus, and the runner that keeps them loaded.

Per-target status is one hash field per target, packed as
``state|attempts|updated_ms|consumer|decision_id|error`` where ``state`` is one letter:
``p`` pending, ``d`` delivered, ``s`` processed, ``f`` failed, ``x`` expired. The hash's
``_e`` field holds the stream entry id and doubles as the "already published" marker.
All keys a script touches share the topic's hash tag (one cluster slot).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = ["DELIVER", "FINISH", "LEASE", "PUBLISH", "REPLAY", "Script", "run", "run_many"]

# Shared Lua helpers: parse and build one packed status value.
_STATUS_LIB = """
local function parse(v)
  local s, a, t, c, d, e = string.match(v, '^(%a)|(%d*)|(%d*)|([^|]*)|([^|]*)|(.*)$')
  if not s then return 'p', 0, '', '', '', '' end
  return s, tonumber(a) or 0, t, c, d, e
end
local function pack(s, a, t, c, d, e)
  return s .. '|' .. a .. '|' .. t .. '|' .. c .. '|' .. d .. '|' .. e
end
local function terminal(s) return s == 's' or s == 'f' or s == 'x' end
"""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# PUBLISH — create one signal.
# KEYS: 1 stream, 2 status hash, 3 subscriber set
# ARGV: 1 now_ms, 2 status ttl ms, 3 n targets, 4..3+n targets, then v, i, d envelope values
# Atomic: the consumer groups a target lacks, the stream entry and every target's pending
# status appear together, or nothing does. If the status hash already exists the signal
# was published before: nothing is written and the existing entry id is returned.
# Returns {1, entry_id} when written, {0, entry_id} for a duplicate.
PUBLISH = Script("publish", _STATUS_LIB + """
local existing = redis.call('HGET', KEYS[2], '_e')
if existing then return {0, existing} end
local n = tonumber(ARGV[3])
local targets
if n == 0 then
  targets = redis.call('SMEMBERS', KEYS[3])
else
  targets = {}
  for i = 1, n do targets[i] = ARGV[3 + i] end
end
for _, t in ipairs(targets) do
  pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], t, '$', 'MKSTREAM')
end
local base = 3 + n
local id = redis.call('XADD', KEYS[1], '*', 'v', ARGV[base + 1], 'i', ARGV[base + 2],
  'd', ARGV[base + 3])
local fields = {'_e', id}
local p = pack('p', 0, ARGV[1], '', '', '')
for _, t in ipairs(targets) do
  fields[#fields + 1] = t
  fields[#fields + 1] = p
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, id}
""")

# DELIVER — record that a consumer read a batch of entries.
# KEYS: 1 stream, 2..n+1 the status hash of each entry
# ARGV: 1 group (target agent), 2 consumer, 3 now_ms, 4 status ttl ms for untracked
#       signals, then per entry: entry_id, expired ('1' or '0')
# Per entry, atomically with its ack where one is due:
#   not a target of the signal, or already terminal -> XACK, result 0
#   expired -> status 'x' + XACK, result -1
#   otherwise -> status 'd', attempts + 1, result = the new attempt number
# An entry with no status hash at all (a valid envelope written by a plain XADD) is
# treated as targeted, and its hash is created with a TTL.
DELIVER = Script("deliver", _STATUS_LIB + """
local group, consumer, now = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #KEYS - 1 do
  local st = KEYS[i + 1]
  local eid, expired = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local cur = redis.call('HGET', st, group)
  local untracked = false
  if not cur then
    if redis.call('EXISTS', st) == 1 then
      redis.call('XACK', KEYS[1], group, eid)
      out[i] = 0
    else
      untracked = true
      cur = pack('p', 0, now, '', '', '')
    end
  end
  if cur then
    local s, a = parse(cur)
    if terminal(s) then
      redis.call('XACK', KEYS[1], group, eid)
      out[i] = 0
    elseif expired == '1' then
      redis.call('HSET', st, group, pack('x', a, now, consumer, '', 'expired before delivery'))
      redis.call('XACK', KEYS[1], group, eid)
      out[i] = -1
    else
      redis.call('HSET', st, group, pack('d', a + 1, now, consumer, '', ''))
      out[i] = a + 1
    end
    if untracked then
      redis.call('HSET', st, '_e', eid)
      redis.call('PEXPIRE', st, ARGV[4])
    end
  end
end
return out
""")

# FINISH — terminal outcome of a batch of entries, written with their acks.
# KEYS: 1 stream, 2 dead-letter stream, 3..n+2 the status hash of each entry
# ARGV: 1 group, 2 consumer, 3 now_ms, then per entry 6 values:
#       entry_id, state ('s' processed, 'f' failed, 'x' expired, 'a' ack only: the
#       entry was deleted from the stream), attempts, decision_id, error_type, error
# Per entry, atomically: if the target's status is already terminal only the ack happens;
# otherwise the terminal status is written (only if the status hash exists: garbage entries
# have none and must not leave an immortal hash behind), a failed entry is copied with its
# original fields and the error onto the dead-letter stream, and the entry is acked.
FINISH = Script("finish", _STATUS_LIB + """
local group, consumer, now = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS - 2 do
  local st = KEYS[i + 2]
  local o = 3 + (i - 1) * 6
  local eid, state, attempts = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local decision, etype, err = ARGV[o + 4], ARGV[o + 5], ARGV[o + 6]
  local cur = redis.call('HGET', st, group)
  local done = state == 'a'
  if cur and not done then
    local s = parse(cur)
    done = terminal(s)
  end
  if not done then
    if redis.call('EXISTS', st) == 1 then
      local msg = err
      if etype ~= '' then msg = etype .. ': ' .. err end
      if #msg > 500 then msg = string.sub(msg, 1, 500) end
      redis.call('HSET', st, group, pack(state, attempts, now, consumer, decision, msg))
    end
    if state == 'f' then
      local fields = {'dlq.target', group, 'dlq.error_type', etype, 'dlq.error', err,
        'dlq.attempts', attempts, 'dlq.failed_at', now, 'dlq.entry', eid,
        'dlq.consumer', consumer}
      local e = redis.call('XRANGE', KEYS[1], eid, eid)
      if e[1] then
        for _, v in ipairs(e[1][2]) do fields[#fields + 1] = v end
      end
      redis.call('XADD', KEYS[2], '*', unpack(fields))
    end
  end
  redis.call('XACK', KEYS[1], group, eid)
end
return #KEYS - 2
""")

# LEASE — keep this consumer's in-flight entries from going idle.
# KEYS: 1 stream
# ARGV: 1 group, 2 consumer, 3.. entry ids
# Each entry still owned by the consumer has its idle time reset (XCLAIM JUSTID, which
# does not count a delivery); entries another consumer took over are left alone.
# Returns the ids this consumer no longer owns.
LEASE = Script("lease", """
local group, consumer = ARGV[1], ARGV[2]
local owned, lost = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then owned[#owned + 1] = ARGV[i]
  else lost[#lost + 1] = ARGV[i] end
end
if #owned > 0 then
  redis.call('XCLAIM', KEYS[1], group, consumer, 0, unpack(owned), 'JUSTID')
end
return lost
""")

# REPLAY — move one dead letter back onto its topic for its target.
# KEYS: 1 stream, 2 dead-letter stream, 3 status hash of the signal
# ARGV: 1 dead-letter entry id, 2 now_ms, 3 status ttl ms
# Atomic: the original envelope is appended to the stream again (the target's group is
# created if missing), the target's status goes back to pending with 0 attempts, and the
# dead letter is deleted. Other targets' groups see the new entry as already terminal and
# ack it without running anything. Returns 1, 0 (no such dead letter) or -1 (the dead
# letter holds no valid envelope: it stays).
REPLAY = Script("replay", _STATUS_LIB + """
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if not e[1] then return 0 end
local f = {}
local kv = e[1][2]
for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
local target = f['dlq.target']
if not (f['v'] and f['i'] and f['d'] and target) then return -1 end
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], target, '$', 'MKSTREAM')
local id = redis.call('XADD', KEYS[1], '*', 'v', f['v'], 'i', f['i'], 'd', f['d'])
redis.call('HSET', KEYS[3], '_e', id, target, pack('p', 0, ARGV[2], '', '', ''))
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
""")

ALL = (PUBLISH, DELIVER, FINISH, LEASE, REPLAY)


async def run(client: Redis, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA, loading the script first if the server forgot it (restart, SCRIPT FLUSH)."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


async def run_many(
    client: Redis, calls: Sequence[tuple[Script, Sequence[str], Sequence[Any]]]
) -> list[Any]:
    """Run many script calls in one pipelined round trip (not a transaction).

    Each call stays atomic on its own. Calls the server answered NOSCRIPT did not run at
    all, so they are sent again once the scripts are loaded. Other errors are returned
    in place of results, for the caller to inspect.
    """
    if not calls:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            await client.script_load(script.source)
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                script, keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            again = await pipe.execute(raise_on_error=False)
        for i, r in zip(missing, again, strict=True):
            results[i] = r
    return results
