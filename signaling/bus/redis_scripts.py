"""Lua scripts of the Redis bus. Each touches the keys of ONE peer or ONE room only
(one hash slot, so they run unchanged on Redis Cluster) and is atomic there.

Per peer, all under the hash tag `{p:<id>}`:
  state   hash   epoch, node, connected (1/0), deadline (ms), delivered (seq),
                 trimmed (set when the inbox was lost: a resume from before it has a gap)
  inbox   stream the peer's deliveries; its ids are the seqs. Capped at the inbox limit
                 PLUS ONE: once full, its oldest entry is not served, it marks the newest
                 seq the bound pushed out (a resume from before it has a gap). So sending
                 only appends (XADD MAXLEN), with no count or marker to keep up to date.
  rooms   set    the rooms the peer is in
and its pub/sub channel, `<prefix>:{p:<id>}`. Per room, `{r:<name>}`: members (set).

While a peer is connected its keys have no TTL; once it is reconnecting they expire
shortly after its grace, a backstop for the sweeper that normally removes them.
"""

# Shared Lua: compare two stream ids ("ms-n").
_CMP = """
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local function cmp(a, b)
  local am, an = parse(a)
  local bm, bn = parse(b)
  if am ~= bm then return am < bm and -1 or 1 end
  if an ~= bn then return an < bn and -1 or 1 end
  return 0
end
"""

# KEYS: state, inbox, rooms, channel [, grace schedule, this node's peers]
# ARGV: node, resume ('' = none), inbox limit [, peer]
# -> {epoch, replaced epoch or -1, resumed 0/1, replay {{id, {'b', body}}...}, rooms, delivered}
# On one Redis the two global keys come along (last, so only a successful attach touches
# them): the peer leaves the grace schedule and joins this node's peers in the same call.
# On a Cluster they live in other slots, and the bus sends ZREM and SADD on their own.
ATTACH = _CMP + """
local state, inbox, rooms, channel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, resume = ARGV[1], ARGV[2]
local prev = redis.call('HMGET', state, 'epoch', 'connected', 'delivered', 'trimmed')
local existed = prev[1] ~= false
local epoch = redis.call('HINCRBY', state, 'epoch', 1)
local replaced = -1
if existed and prev[2] == '1' then replaced = tonumber(prev[1]) end
local last, trimmed, first = '0-0', prev[4] or '0-0', nil
if redis.call('EXISTS', inbox) == 1 then
  local info = redis.call('XINFO', 'STREAM', inbox)
  local length, oldest = 0, nil
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1]
    elseif info[i] == 'length' then length = info[i + 1]
    elseif info[i] == 'first-entry' and info[i + 1] then oldest = info[i + 1][1] end
  end
  if oldest and length > tonumber(ARGV[3]) then  -- full: the oldest marks what was pushed out
    first = oldest
    if cmp(trimmed, first) < 0 then trimmed = first end
  end
end
local resumed, start = 0, last
if existed then
  if resume ~= '' then
    if cmp(trimmed, resume) <= 0 and cmp(resume, last) <= 0 then resumed = 1 end
    if cmp(resume, last) < 0 then start = resume end
  elseif prev[2] ~= '1' and prev[3] then
    start = prev[3]
  end
end
if first and cmp(start, first) < 0 then start = first end  -- never serve the marker
local replay = redis.call('XRANGE', inbox, '(' .. start, '+')
local delivered = last
if #replay > 0 then delivered = replay[#replay][1] end
redis.call('HSET', state, 'node', node, 'connected', 1, 'deadline', 0, 'delivered', delivered)
redis.call('PERSIST', state)
redis.call('PERSIST', inbox)
redis.call('PERSIST', rooms)
if replaced >= 0 then
  redis.call('PUBLISH', channel, cmsgpack.pack({v = 1, k = 'r', e = replaced}))
end
if KEYS[6] then
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('SADD', KEYS[6], ARGV[4])
end
return {epoch, replaced, resumed, replay, redis.call('SMEMBERS', rooms), delivered}
"""

# KEYS: state, inbox, rooms   ARGV: epoch, final 0/1, delivered ('' = unknown), deadline ms, ttl ms
# -> {0} stale | {1} reconnecting | {2, rooms} gone
DETACH = """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'epoch', 'connected')
if st[1] ~= ARGV[1] or st[2] ~= '1' then return {0} end
if ARGV[2] == '1' then
  local r = redis.call('SMEMBERS', rooms)
  redis.call('DEL', state, inbox, rooms)
  return {2, r}
end
redis.call('HSET', state, 'connected', 0, 'deadline', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', state, 'delivered', ARGV[3]) end
for _, key in ipairs({state, inbox, rooms}) do redis.call('PEXPIRE', key, ARGV[5]) end
return {1}
"""

# A node died: its connected peers become reconnecting.
# KEYS: state, inbox, rooms   ARGV: dead node, deadline ms, ttl ms  -> 1 if orphaned
ORPHAN = """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'node', 'connected')
if st[1] ~= ARGV[1] or st[2] ~= '1' then return 0 end
redis.call('HSET', state, 'connected', 0, 'deadline', ARGV[2])
for _, key in ipairs({state, inbox, rooms}) do redis.call('PEXPIRE', key, ARGV[3]) end
return 1
"""

# The grace ran out. KEYS: state, inbox, rooms   ARGV: now ms
# -> false (still there, or gone already) | {rooms, undelivered count}
EXPIRE = """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'connected', 'deadline', 'delivered')
if st[1] ~= '0' or tonumber(st[2]) > tonumber(ARGV[1]) then return false end
local undelivered = #redis.call('XRANGE', inbox, '(' .. (st[3] or '0-0'), '+')
local r = redis.call('SMEMBERS', rooms)
redis.call('DEL', state, inbox, rooms)
return {r, undelivered}
"""

# KEYS: state, inbox, channel   ARGV: body, inbox limit, now ms, ttl ms
# -> {0} no peer | {1, seq} delivered | {2, seq} queued
SEND = """
local state, inbox, channel = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'epoch', 'connected', 'deadline')
if not st[1] then return {0} end
local live = st[2] == '1'
if not live and tonumber(st[3]) <= tonumber(ARGV[3]) then return {0} end
local id = redis.call('XADD', inbox, 'MAXLEN', tonumber(ARGV[2]) + 1, '*', 'b', ARGV[1])  -- see the top
if live then
  local heard = redis.call('PUBLISH', channel,
    cmsgpack.pack({v = 1, k = 'd', e = tonumber(st[1]), s = id, b = ARGV[1], t = tonumber(ARGV[3])}))
  if heard > 0 then return {1, id} end
  return {2, id}  -- its node is not listening (it died): kept for the resume
end
if redis.call('PTTL', inbox) < 0 then redis.call('PEXPIRE', inbox, ARGV[4]) end
return {2, id}
"""

# KEYS: peer rooms   ARGV: room, rooms per peer  -> 0 too many | 1 added | 2 already there
JOIN_PEER = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: room members   ARGV: peer, room limit  -> {0} full | {1, others} added | {2, others} already there
JOIN_ROOM = """
local others = redis.call('SMEMBERS', KEYS[1])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {2, others} end
if #others >= tonumber(ARGV[2]) then return {0} end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, others}
"""

# KEYS: room members   ARGV: peer  -> false if not a member | the remaining members
LEAVE_ROOM = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('SMEMBERS', KEYS[1])
"""

# KEYS: room members   ARGV: peer  -> false if not a member | all members
MEMBERS_IF_IN = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('SMEMBERS', KEYS[1])
"""

# KEYS: the grace zset   ARGV: peer, now ms -> removes the entry only if it is still due
# (a peer that reconnected and dropped again meanwhile has a later deadline to keep)
UNSCHEDULE = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# Redis lost this peer's state (restarted empty, or a failover to a lagging replica) or
# marked it reconnecting while this node was cut off: the node that holds its live
# connection registers it again. KEYS: state, inbox, rooms   ARGV: epoch, node, last seq
# -> 0 a newer connection owns the peer | 1 repaired | 2 restored from nothing
REGISTER = """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'epoch')
if st[1] and tonumber(st[1]) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', state, 'epoch', ARGV[1], 'node', ARGV[2], 'connected', 1, 'deadline', 0)
for _, key in ipairs({state, inbox, rooms}) do redis.call('PERSIST', key) end
if st[1] then return 1 end
-- what was in the inbox is gone: a resume from before this point cannot be served
redis.call('HSET', state, 'delivered', ARGV[3], 'trimmed', ARGV[3])
if redis.call('EXISTS', inbox) == 0 then
  -- new seqs must follow the ones this peer already has: start the stream after ARGV[3]
  local ms, n = string.match(ARGV[3], '^(%d+)-(%d+)$')
  local id = redis.call('XADD', inbox, ms .. '-' .. (tonumber(n) + 1), 'b', '')
  redis.call('XDEL', inbox, id)
end
return 2
"""
