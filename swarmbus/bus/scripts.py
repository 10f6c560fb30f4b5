"""Every Lua script of the bus, and the runner that keeps them loaded.

Per-target status is one hash field per target, packed as
``state|attempts|updated_ms|consumer|decision_id|error`` where ``state`` is one letter:
``p`` pending, ``d`` delivered, ``s`` processed, ``f`` failed, ``x`` expired. Fields whose
name starts with ``_`` are metadata, never targets (agent names cannot start with ``_``):
``_e`` holds the stream entry id and doubles as the "already published" marker; ``_u``
marks a hash that a consumer created for an entry written without one (a plain XADD), whose
targets are then decided by the envelope.
All keys a script touches share the topic's hash tag (one cluster slot).

Lua's ``unpack`` fails past ~8,000 values (LUAI_MAXCSTACK) and Redis does not roll a
script back: a script that writes and then hits that limit leaves half its work done.
No script here calls ``unpack`` on a list that can grow, except through ``call_chunked``
below, which passes at most ``CHUNK`` values per call (``tests/bus/test_scripts.py``
checks this).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = [
    "CHUNK_LIB",
    "DELCONSUMER",
    "DELIVER",
    "FINISH",
    "HEARTBEAT",
    "LEASE",
    "PUBLISH",
    "RELEASE",
    "REPLAY",
    "Script",
    "run",
    "run_many",
]

#: The only place allowed to ``unpack``: a command whose trailing arguments come from a
#: list of any length is sent in slices of at most 1,000 values (500 field/value pairs).
CHUNK_LIB = """
local function call_chunked(cmd, key, list)
  local n = #list
  for i = 1, n, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, n)))
  end
end
"""

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
local function meta(f) return string.sub(f, 1, 1) == '_' end
"""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# PUBLISH — create a batch of signals of one topic.
# KEYS: 1 stream, 2 subscriber set, 3 set of the topic's consumer groups
# ARGV: 1 now_ms, 2 status key prefix, 3 '1' to return a duplicate's existing envelope data,
#       then per signal: id, status ttl ms, n targets, the n targets, envelope data
# Atomic (the whole batch, so each signal too): the consumer groups a target lacks, the
# stream entry and every target's pending status appear together, or nothing does. A
# signal whose status hash exists was published before: nothing is written for it. A
# group is created only for a target not yet in the groups set (a membership test per
# target instead of a failing XGROUP CREATE per target and signal). Nothing after the
# XADD can fail on the size of the target list: the status fields go in bounded slices.
# Returns per signal: entry id, 1 when written or 0 for a duplicate, and the existing
# envelope data of a duplicate when ARGV[3] is '1' (else '').
PUBLISH = Script("publish", CHUNK_LIB + _STATUS_LIB + """
local now, prefix, want = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local subscribers
local i = 4
while i <= #ARGV do
  local sid, ttl, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local st = prefix .. sid
  local data = ARGV[i + 3 + n]
  local existing = redis.call('HGET', st, '_e')
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
    local old = ''
    if want == '1' then
      local e = redis.call('XRANGE', KEYS[1], existing, existing)
      if e[1] then
        local kv = e[1][2]
        for j = 1, #kv, 2 do if kv[j] == 'd' then old = kv[j + 1] end end
      end
    end
    out[#out + 1] = old
  else
    local targets
    if n == 0 then
      subscribers = subscribers or redis.call('SMEMBERS', KEYS[2])
      targets = subscribers
    else
      targets = {}
      for j = 1, n do targets[j] = ARGV[i + 2 + j] end
    end
    for _, t in ipairs(targets) do
      if redis.call('SISMEMBER', KEYS[3], t) == 0 then
        pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], t, '$', 'MKSTREAM')
        redis.call('SADD', KEYS[3], t)
      end
    end
    local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'i', sid, 'd', data)
    local fields = {'_e', id}
    local p = pack('p', 0, now, '', '', '')
    for _, t in ipairs(targets) do
      fields[#fields + 1] = t
      fields[#fields + 1] = p
    end
    call_chunked('HSET', st, fields)
    redis.call('PEXPIRE', st, ttl)
    out[#out + 1] = id
    out[#out + 1] = 1
    out[#out + 1] = ''
  end
  i = i + 4 + n
end
return out
""")

# Batch scripts take their entries packed into one argument instead of several arguments
# (and a declared key) per entry: encoding arguments was the largest client-side cost per
# message. Every packed id is checked by the client to hold no ',' or ' ' (entry ids are
# digits and '-', signal ids match ``SIGNAL_ID``, garbage ids are sent as '~'). The status
# hashes they touch are built from a prefix in the topic's hash tag, so they always live
# in the stream's cluster slot.

# DELIVER — record that a consumer read a batch of entries.
# KEYS: 1 stream
# ARGV: 1 group (target agent), 2 consumer, 3 now_ms, 4 status ttl ms for untracked
#       signals, 5 status key prefix, 6 the entries: "ENTRY_ID,SIGNAL_ID,EXPIRED,TARGETED ..."
#       (EXPIRED 1 or 0; TARGETED 1 when the envelope names this agent or no target at all)
# Per entry, atomically with its ack where one is due:
#   not a target of the signal, or already terminal -> XACK, result 0
#   expired -> status 'x' + XACK, result -1
#   otherwise -> status 'd', attempts + 1, result = the new attempt number
# The status the publisher wrote decides who is a target. An entry written without one
# (a valid envelope from a plain XADD) is decided by its envelope (TARGETED): the hash is
# created, marked '_u', and every targeted group adds its own field.
DELIVER = Script("deliver", _STATUS_LIB + """
local group, consumer, now, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local out = {}
for eid, sid, expired, targeted in
    string.gmatch(ARGV[6], '([^, ]+),([^, ]+),(%d),(%d)') do
  local st = prefix .. sid
  local cur = redis.call('HGET', st, group)
  local result = 0
  if not cur then
    local tracked = redis.call('EXISTS', st) == 1 and redis.call('HEXISTS', st, '_u') == 0
    if tracked or targeted == '0' then
      redis.call('XACK', KEYS[1], group, eid)
    else
      cur = pack('p', 0, now, '', '', '')
      redis.call('HSET', st, '_u', '1')
      if redis.call('HEXISTS', st, '_e') == 0 then redis.call('HSET', st, '_e', eid) end
      if redis.call('PTTL', st) < 0 then redis.call('PEXPIRE', st, ARGV[4]) end
    end
  end
  if cur then
    local s, a = parse(cur)
    if terminal(s) then
      redis.call('XACK', KEYS[1], group, eid)
    elseif expired == '1' then
      redis.call('HSET', st, group, pack('x', a, now, consumer, '', 'expired before delivery'))
      redis.call('XACK', KEYS[1], group, eid)
      result = -1
    else
      redis.call('HSET', st, group, pack('d', a + 1, now, consumer, '', ''))
      result = a + 1
    end
  end
  out[#out + 1] = result
end
return out
""")

# FINISH — terminal outcome of a batch of entries, written with their acks.
# KEYS: 1 stream, 2 dead-letter stream, 3 the topic's set of dead-lettered entries that
#       have no status ("AGENT|ENTRY_ID" by entry time)
# ARGV: 1 group, 2 consumer, 3 now_ms, 4 status key prefix, 5 the entries:
#       "ENTRY_ID,SIGNAL_ID,STATE,ATTEMPTS,DECISION_ID,K ..." where STATE is 's'
#       processed, 'f' failed, 'x' expired or 'a' ack only, SIGNAL_ID is '~' for an entry
#       without a usable id, DECISION_ID is '-' for none, and K is 0 or the index in ARGV
#       of the error type, followed by the status message (already cut to a whole UTF-8
#       character under 500 bytes by the client) and the full error text; 6.. those triples
# Per entry, atomically: if the target's status is already terminal only the ack happens;
# otherwise the terminal status is written (only if the status hash exists: garbage entries
# have none and must not leave an immortal hash behind), a failed entry is copied with its
# original fields (at most 1,000 of them) and the error onto the dead-letter stream, and
# the entry is acked. An entry without status is dead-lettered once per group, however
# often it is read again (group recreated, reconnect re-read): KEYS[3] remembers it.
# Returns the number of entries it understood (the client checks it against what it sent).
FINISH = Script("finish", CHUNK_LIB + _STATUS_LIB + """
local group, consumer, now, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = 0
for eid, sid, state, attempts, decision, k in
    string.gmatch(ARGV[5], '([^, ]+),([^, ]+),(%a),(%d+),([^, ]+),(%d+)') do
  n = n + 1
  local st = prefix .. sid
  if decision == '-' then decision = '' end
  local etype, msg, err = '', '', ''
  if k ~= '0' then
    local j = tonumber(k)
    etype, msg, err = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  end
  local tracked = sid ~= '~' and redis.call('EXISTS', st) == 1
  local done = state == 'a'
  if not done and tracked then
    local cur = redis.call('HGET', st, group)
    if cur then done = terminal(parse(cur)) end
  end
  if not done and not tracked and state == 'f' then
    local mark = group .. '|' .. eid
    if redis.call('ZSCORE', KEYS[3], mark) then
      done = true
    else
      redis.call('ZADD', KEYS[3], tonumber(string.match(eid, '^(%d+)')) or 0, mark)
    end
  end
  if not done then
    if tracked then
      redis.call('HSET', st, group, pack(state, attempts, now, consumer, decision, msg))
    end
    if state == 'f' then
      local fields = {'*', 'dlq.target', group, 'dlq.error_type', etype, 'dlq.error', err,
        'dlq.attempts', attempts, 'dlq.failed_at', now, 'dlq.entry', eid,
        'dlq.consumer', consumer}
      local e = redis.call('XRANGE', KEYS[1], eid, eid)
      if e[1] then
        local kv = e[1][2]
        local keep = math.min(#kv, 2000)
        for j = 1, keep do fields[#fields + 1] = kv[j] end
        if keep < #kv then
          fields[#fields + 1] = 'dlq.fields_dropped'
          fields[#fields + 1] = tostring((#kv - keep) / 2)
        end
      elseif sid ~= '~' then
        fields[#fields + 1] = 'i'
        fields[#fields + 1] = sid
      end
      -- bounded: at most 2015 values (14 dlq fields, 2,000 original, 1 marker pair)
      redis.call('XADD', KEYS[2], unpack(fields, 1, #fields))
    end
  end
  redis.call('XACK', KEYS[1], group, eid)
end
return n
""")

# LEASE — keep this consumer's in-flight entries from going idle.
# KEYS: 1 stream
# ARGV: 1 group, 2 consumer, 3.. entry ids (the client sends at most 1,000 per call)
# Each entry still owned by the consumer has its idle time reset (XCLAIM JUSTID, which
# does not count a delivery); entries another consumer took over are left alone.
# Returns the ids this consumer no longer owns.
LEASE = Script("lease", """
local group, consumer = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
""")

# RELEASE — hand entries back that this consumer holds but will not run (it is stopping).
# KEYS: 1 stream
# ARGV: 1 group, 2 consumer, 3 now_ms, 4 status key prefix, 5 idle ms to set,
#       6 the entries: "ENTRY_ID,SIGNAL_ID,UNDO ..." (UNDO 1 when the entry's current
#       attempt was counted but its handler never started)
# Per entry still owned by the consumer, atomically: the uncounted attempt is taken back
# (status back to 'pending' when no attempt is left, so a stop never spends an attempt of
# a signal that did not run), and the entry's idle time is set to ARGV[5] so the next
# reclaim pass of a live consumer takes it without waiting for it to age.
# Returns the number of entries handed back.
RELEASE = Script("release", _STATUS_LIB + """
local group, consumer, now, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = 0
for eid, sid, undo in string.gmatch(ARGV[6], '([^, ]+),([^, ]+),(%d)') do
  local p = redis.call('XPENDING', KEYS[1], group, eid, eid, 1)
  if p[1] and p[1][2] == consumer then
    if undo == '1' and sid ~= '~' then
      local st = prefix .. sid
      local cur = redis.call('HGET', st, group)
      if cur then
        local s, a, t, c = parse(cur)
        if s == 'd' and c == consumer and a > 0 then
          a = a - 1
          if a == 0 then
            redis.call('HSET', st, group, pack('p', 0, now, '', '', ''))
          else
            redis.call('HSET', st, group, pack('d', a, now, consumer, '', ''))
          end
        end
      end
    end
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, eid, 'IDLE', ARGV[5], 'JUSTID')
    n = n + 1
  end
end
return n
""")

# REPLAY — move one dead letter back onto its topic for its target.
# KEYS: 1 stream, 2 dead-letter stream, 3 status hash of the signal
# ARGV: 1 dead-letter entry id, 2 now_ms, 3 status ttl ms
# Atomic: the original envelope is appended to the stream again, restricted to the target
# (field 't'; the target's group is created if missing), the target's status goes back to
# pending with 0 attempts, and the dead letter is deleted. Other targets' groups ack the
# new entry without looking at it, whatever their own status is (still running, or
# waiting for a retry): a replay never runs anything twice for them. Returns 1, 0 (no such
# dead letter) or -1 (the dead letter holds no valid envelope: it stays).
REPLAY = Script("replay", _STATUS_LIB + """
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if not e[1] then return 0 end
local f = {}
local kv = e[1][2]
for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
local target = f['dlq.target']
if not (f['v'] and f['i'] and f['d'] and target) then return -1 end
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], target, '$', 'MKSTREAM')
local id = redis.call('XADD', KEYS[1], '*', 'v', f['v'], 'i', f['i'], 'd', f['d'], 't', target)
redis.call('HSET', KEYS[3], '_e', id, target, pack('p', 0, ARGV[2], '', '', ''))
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
""")

# HEARTBEAT — register consumers as alive, stamped with the server's clock.
# KEYS: 1 heartbeat zset, 2 heartbeat records hash
# ARGV: member, record JSON, member, record JSON, ... (one pair per consumer of a worker)
# Liveness compares these stamps with the server's TIME, never with another host's clock.
HEARTBEAT = Script("heartbeat", """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[1], ms, ARGV[i])
end
return ms
""")

# DELCONSUMER — remove a dead consumer from a group, only if it holds nothing.
# KEYS: 1 stream; ARGV: 1 group, 2 consumer
# Atomic: XGROUP DELCONSUMER drops the consumer's pending entries with it (they would never
# be delivered again), so the check and the removal must not be split. Returns 1 removed,
# 0 it holds entries (left alone).
DELCONSUMER = Script("delconsumer", """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if p[1] then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
""")

ALL = (PUBLISH, DELIVER, FINISH, LEASE, RELEASE, REPLAY, HEARTBEAT, DELCONSUMER)


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


# --- agent memory ---------------------------------------------------------------------
# Rollup hashes hold, per decision type T and for the aggregate type '*':
#   T|n decisions, T|cn decisions with a confidence, T|cs sum of confidences,
#   T|on outcomes, T|s successes, T|qn outcomes with a quality, T|qs sum of qualities,
#   T|ln outcomes with a latency, T|l:BIN latency histogram.

# DECIDE — record one decision.
# KEYS: 1 record, 2 time index, 3 type index, 4 STM stream, 5 minute rollup, 6 hour rollup,
#       7 children set of the parent (same agent) or an unused key of the agent's slot,
#       8 the agent's set of decision types
# ARGV: 1 id, 2 created ms, 3 type, 4 record JSON, 5 retention ms, 6 confidence or '',
#       7 parent id or '', 8 rollup ttl ms, 9 '1' to append the STM event ('0' when
#       restoring a backup: the patterns are restored as they were, not re-learned)
# Atomic: record, both indexes, parent link, STM event and rollups, or nothing (an id
# already recorded is a no-op: handler re-runs derive the same id). Index entries past
# retention are dropped on the way. Returns 1 when recorded, 0 for a duplicate.
DECIDE = Script("decide", """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local created, dtype = ARGV[2], ARGV[3]
redis.call('HSET', KEYS[1], 'r', ARGV[4], 't', created, 'type', dtype)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local horizon = tonumber(created) - tonumber(ARGV[5])
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], created, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', horizon)
end
if ARGV[7] ~= '' then
  redis.call('SADD', KEYS[7], ARGV[1])
  redis.call('PEXPIRE', KEYS[7], ARGV[5])
end
redis.call('SADD', KEYS[8], dtype)
if ARGV[9] == '1' then
  redis.call('XADD', KEYS[4], '*', 'k', 'd', 'id', ARGV[1], 'r', ARGV[4])
end
for i = 5, 6 do
  for _, t in ipairs({dtype, '*'}) do
    redis.call('HINCRBY', KEYS[i], t .. '|n', 1)
    if ARGV[6] ~= '' then
      redis.call('HINCRBY', KEYS[i], t .. '|cn', 1)
      redis.call('HINCRBYFLOAT', KEYS[i], t .. '|cs', ARGV[6])
    end
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[8])
end
return 1
""")

# OUTCOME — record the outcome of one decision (once).
# KEYS: 1 record, 2 STM stream, 3 minute rollup, 4 hour rollup (of the decision's creation)
# ARGV: 1 id, 2 outcome JSON, 3 success '1'/'0', 4 quality or '', 5 latency bin or '',
#       6 created ms the caller computed the rollup keys from, 7 '1' to append the STM event
# Atomic: outcome on the record, STM event (decision + outcome, all the coordinator needs)
# and rollups. Returns 1 recorded, 0 already recorded (first outcome wins), -1 unknown
# decision, -2 the rollup keys do not match the record's creation time.
OUTCOME = Script("outcome", """
local created = redis.call('HGET', KEYS[1], 't')
if not created then return -1 end
if redis.call('HEXISTS', KEYS[1], 'o') == 1 then return 0 end
if created ~= ARGV[6] then return -2 end
local dtype = redis.call('HGET', KEYS[1], 'type')
local record = redis.call('HGET', KEYS[1], 'r')
redis.call('HSET', KEYS[1], 'o', ARGV[2])
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[2], '*', 'k', 'o', 'id', ARGV[1], 'r', record, 'o', ARGV[2])
end
for i = 3, 4 do
  for _, t in ipairs({dtype, '*'}) do
    redis.call('HINCRBY', KEYS[i], t .. '|on', 1)
    if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[i], t .. '|s', 1) end
    if ARGV[4] ~= '' then
      redis.call('HINCRBY', KEYS[i], t .. '|qn', 1)
      redis.call('HINCRBYFLOAT', KEYS[i], t .. '|qs', ARGV[4])
    end
    if ARGV[5] ~= '' then
      redis.call('HINCRBY', KEYS[i], t .. '|ln', 1)
      redis.call('HINCRBY', KEYS[i], t .. '|l:' .. ARGV[5], 1)
    end
  end
end
return 1
""")

# STATS — add up rollup hashes server-side.
# KEYS: the minute and hour rollups covering the window
# ARGV: 1 decision type or '*'
# Returns a flat [field, total, ...] list of the type's fields summed over the keys.
STATS = Script("stats", """
local prefix = ARGV[1] .. '|'
local plen = #prefix
local sums, order = {}, {}
for _, key in ipairs(KEYS) do
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    local f = h[i]
    if string.sub(f, 1, plen) == prefix then
      local name = string.sub(f, plen + 1)
      if sums[name] == nil then sums[name] = 0; order[#order + 1] = name end
      sums[name] = sums[name] + tonumber(h[i + 1])
    end
  end
end
local out = {}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = string.format('%.17g', sums[name])
end
return out
""")

# STATE_SET — compare-and-set an agent's state.
# KEYS: 1 state hash
# ARGV: 1 data JSON, 2 expected version or '' (no check), 3 now ms
# Atomic: the version check and the write. Returns {1, new version} or {-1, current
# version} when the expected version is not the current one.
STATE_SET = Script("state_set", """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= v then return {-1, v} end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[1], 't', ARGV[3])
return {1, v}
""")

# CHECKPOINT — snapshot the current state.
# KEYS: 1 state hash, 2 checkpoint index, 3 the new checkpoint hash
# ARGV: 1 checkpoint id, 2 label, 3 now ms, 4 checkpoints kept, 5 checkpoint key prefix,
#       6 '1' to skip when the state did not change since the last checkpoint (or was
#       never set: there is nothing to keep)
# Atomic: snapshot + index + trimming to the newest N (older snapshots are deleted; they
# share the agent's hash tag). Returns {1, version} or {0, version} when skipped.
CHECKPOINT = Script("checkpoint", """
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[1], 'v') == 0 then return {0, 0} end
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if ARGV[6] == '1' and redis.call('HGET', KEYS[1], 'cv') == v then return {0, tonumber(v)} end
local seq = redis.call('HINCRBY', KEYS[1], 'cseq', 1)
redis.call('HSET', KEYS[1], 'cv', v)
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'label', ARGV[2], 'v', v, 't', ARGV[3],
  'd', redis.call('HGET', KEYS[1], 'd') or '{}')
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
    redis.call('DEL', ARGV[5] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
return {1, tonumber(v)}
""")

# ROLLBACK — make a checkpoint's data the current state again.
# KEYS: 1 state hash, 2 checkpoint hash
# ARGV: 1 now ms
# Atomic: the state becomes the snapshot's data under a new version (so writers holding
# the old version get a conflict). Returns the new version, or -1 for an unknown checkpoint.
ROLLBACK = Script("rollback", """
local d = redis.call('HGET', KEYS[2], 'd')
if not d then return -1 end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'd', d, 't', ARGV[1])
return v
""")

# FOLD — apply one STM outcome event to its pattern, exactly once.
# KEYS: 1 pattern hash, 2 agent's pattern index, 3 type index, 4 match index,
#       5 applied-events zset, 6 STM stream
# ARGV: 1 STM entry id, 2 consumer group, 3 pattern id, 4 agent, 5 decision type,
#       6 conditions JSON, 7 choice JSON, 8 success '1'/'0', 9 quality or '', 10 now ms,
#       11 event time ms
# Atomic: the applied marker, the statistics (n, successes, quality sum and sum of
# squares, version), the Wilson lower bound (95 %) in all three indexes and the ack. An
# event already marked is only acked: replays, crashes and competing coordinators never
# count twice. Returns 1 applied, 0 already applied.
FOLD = Script("fold", """
local eid = ARGV[1]
if redis.call('ZSCORE', KEYS[5], eid) then
  redis.call('XACK', KEYS[6], ARGV[2], eid)
  return 0
end
redis.call('ZADD', KEYS[5], ARGV[11], eid)
local p = KEYS[1]
if redis.call('EXISTS', p) == 0 then
  redis.call('HSET', p, 'id', ARGV[3], 'agent', ARGV[4], 'type', ARGV[5], 'cond', ARGV[6],
    'choice', ARGV[7], 'learned', ARGV[10], 'shared', '[]', 'meta', '{}')
end
local n = redis.call('HINCRBY', p, 'n', 1)
local s = redis.call('HINCRBY', p, 's', ARGV[8] == '1' and 1 or 0)
if ARGV[9] ~= '' then
  local q = tonumber(ARGV[9])
  redis.call('HINCRBY', p, 'qn', 1)
  redis.call('HINCRBYFLOAT', p, 'qs', q)
  redis.call('HINCRBYFLOAT', p, 'qss', q * q)
end
redis.call('HINCRBY', p, 'ver', 1)
local z, phat = 1.959963984540054, s / n
local lb = (phat + z * z / (2 * n) - z * math.sqrt((phat * (1 - phat) + z * z / (4 * n)) / n))
  / (1 + z * z / n)
if lb < 0 then lb = 0 end
redis.call('HSET', p, 'conf', string.format('%.17g', lb), 'updated', ARGV[10])
for i = 2, 4 do redis.call('ZADD', KEYS[i], lb, ARGV[3]) end
redis.call('XACK', KEYS[6], ARGV[2], eid)
return 1
""")

# --- coordinator ------------------------------------------------------------------------

# LEASE_ACQUIRE — take or renew the coordinators' job lease.
# KEYS: 1 lease key, 2 fencing counter
# ARGV: 1 holder name, 2 ttl ms
# Atomic: a free lease is taken with a new fencing token (INCR); the holder renews its own
# lease keeping its token. Returns the token held, or 0 when another replica holds it.
LEASE_ACQUIRE = Script("lease_acquire", """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, token = string.match(cur, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
""")

# LEASE_RELEASE — give the lease up if still ours.
# KEYS: 1 lease key; ARGV: 1 holder name, 2 token
LEASE_RELEASE = Script("lease_release", """
if redis.call('GET', KEYS[1]) == ARGV[1] .. '|' .. ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")

# JANITOR_TOPIC — expire what is owed past its expiry, then remove those entries.
# KEYS: 1 stream, 2 the topic's fence key, 3 the topic's dead-lettered-garbage set,
#       4..n+3 the status hash of each expired entry
# ARGV: 1 fencing token, 2 now ms, 3 MINID (first entry to keep; '' to trim nothing),
#       4..n+3 the entry id of each status hash in KEYS (same position)
# Atomic per call: a janitor whose token is older than one already seen on this topic
# does nothing (-1). Otherwise every target of each entry that is not terminal becomes
# 'expired' and the entry is acked in that target's group; only then are the entries
# removed: those before MINID by XTRIM, the others (expired entries behind a long-lived
# one that pins MINID) one by one with XDEL. No owed entry is ever removed without its
# status saying so. Returns the number of entries removed.
JANITOR_TOPIC = Script("janitor_topic", _STATUS_LIB + """
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) < seen then return -1 end
redis.call('SET', KEYS[2], ARGV[1])
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local removed = 0
for i = 4, #KEYS do
  local eid = ARGV[i]
  local h = redis.call('HGETALL', KEYS[i])
  for j = 1, #h, 2 do
    local target = h[j]
    if not meta(target) then
      local s, a = parse(h[j + 1])
      if not terminal(s) then
        redis.call('HSET', KEYS[i], target,
          pack('x', a, ARGV[2], 'janitor', '', 'expired before it was processed'))
      end
      pcall(redis.call, 'XACK', KEYS[1], target, eid)
    end
  end
  if ARGV[3] == '' or not before(eid, ARGV[3]) then
    removed = removed + redis.call('XDEL', KEYS[1], eid)
  end
end
if ARGV[3] ~= '' then
  removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', ARGV[3])
  local ms = string.match(ARGV[3], '^(%d+)')
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ms)
end
return removed
""")
