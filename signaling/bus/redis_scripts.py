"""Lua scripts of the Redis bus. Each touches the keys of ONE peer or ONE room only
(one hash slot, so they run unchanged on Redis Cluster) and is atomic there; on one
Redis some take the cluster-wide keys too (the grace schedule, a node's peer set, the
sender's state), always as optional trailing KEYS.

Per peer, all under the hash tag `{p:<id>}`:
  state   hash   epoch (the owning connection: its fence), started (when that
                 connection's handshake began), node, connected (1/0), deadline (ms),
                 delivered (seq), trimmed (set when the inbox was lost: a resume from
                 before it has a gap), restored (the last seq its connection had when
                 Redis lost the peer and its node registered it again: REGISTER)
  inbox   stream the peer's deliveries; its ids are the seqs, each entry `b` (body) and
                 `k` (the sending node's key for that send, so a retry finds it), and
                 `o` on one handed in again after a loss under a newer id (its first seq).
                 Bounded in entries and in bytes (state `ib`, counted as inbox.entry_size):
                 SEND lets the oldest go (past a bound, down to 15/16 of it) and records
                 the newest one gone in `trimmed`
                 (a resume from before it has a gap); so does TRIM, for what the
                 connected client certainly has. (Inboxes written before the byte
                 bound were capped at the limit plus one, the oldest entry marking the
                 gap: `window` still reads those.)
  quota   string the peer's quota as its last connection left it (quota.py), with its
                 time; kept for as long as it says anything
  rooms   set    the rooms the peer is in
and its pub/sub channel, `<prefix>:{p:<id>}`. Per room, `{r:<name>}`: members (set).

Time is Redis's (`TIME`), never a node's: every deadline is written and compared by
the server that holds it, so node clocks may be any distance apart. Epochs are
microseconds of that clock (one more than the last epoch if the clock has not moved
past it), so they keep increasing when Redis restarts empty: a connection from before
the loss can never carry the epoch of one made after it.

Every script does all of its reads and checks before its first write. Scripts that
only keep the cluster alive or shrink it (leases, detaches, expiry, recovery) are
flagged `allow-oom`: a full Redis refuses new messages and connections, never a
node's lease or a peer's way out. The others are refused by a full Redis before
their first write.
"""

_KEEPS_ALIVE = "#!lua flags=allow-oom\n"  # a shebang: the first line of the script

_COMMON = """
local function time_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(x) return string.format('%.0f', x) end
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
-- the inbox as a resume sees it: {last id, oldest servable bound (or nil), trimmed}
local function window(inbox, limit, trimmed)
  local last, first = '0-0', nil
  if redis.call('EXISTS', inbox) == 1 then
    local info = redis.call('XINFO', 'STREAM', inbox)
    local length, oldest = 0, nil
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = info[i + 1]
      elseif info[i] == 'length' then length = info[i + 1]
      elseif info[i] == 'first-entry' and info[i + 1] then oldest = info[i + 1][1] end
    end
    if oldest and length > tonumber(limit) then  -- full: the oldest marks what was pushed out
      first = oldest
      if cmp(trimmed, first) < 0 then trimmed = first end
    end
  end
  return last, first, trimmed
end
local ENTRY_OVERHEAD = 64  -- inbox.ENTRY_OVERHEAD
local function entry_size(e)  -- an XRANGE entry, as inbox.entry_size counts it
  local f = e[2]
  for j = 1, #f, 2 do if f[j] == 'b' then return #f[j + 1] + ENTRY_OVERHEAD end end
  return ENTRY_OVERHEAD
end
local function bodies(entries)  -- XRANGE entries -> {{id, body}...}
  local out = {}
  for i, e in ipairs(entries) do
    local f, body = e[2], ''
    for j = 1, #f, 2 do if f[j] == 'b' then body = f[j + 1] end end
    out[i] = {e[1], body}
  end
  return out
end
"""

# KEYS: state, inbox, rooms, channel, quota [, grace schedule, this node's peers]
# ARGV: node, resume ('' = none), inbox limit, peer, handshake start (us, Redis time), latest start (us),
#       grace ms
# -> {-1, why}: refused (why 0: too late, the client has given up; 1: a newer handshake owns the peer)
#  | {epoch, replaced epoch or -1, resumed 0/1, replay {{id, body}...}, rooms, delivered, resume point,
#     lost 0/1: a resume from a seq younger than the grace found no state, so Redis lost its data,
#     the peer's quota as its last connection left it (false: none) and its age in ms}
# A handshake that began before the one that owns the peer, or that reaches Redis after its
# latest start, is refused: a client's abandoned handshake can never take over its newer one.
ATTACH = _COMMON + """
local state, inbox, rooms, channel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, resume, limit = ARGV[1], ARGV[2], ARGV[3]
local started = tonumber(ARGV[5])
if resume ~= '' and not string.match(resume, '^%d+-%d+$') then return redis.error_reply('ATTACH: bad resume') end
local now = time_us()
if now > tonumber(ARGV[6]) then return {-1, 0} end
local prev = redis.call('HMGET', state, 'epoch', 'connected', 'delivered', 'trimmed', 'started')
if prev[5] and tonumber(prev[5]) > started then return {-1, 1} end
local existed = prev[1] ~= false
local lost = 0
if not existed and resume ~= '' then  -- seqs are ms of Redis's clock: a recent one cannot have expired
  local ms = parse(resume)
  if ms > 0 and now / 1000 - ms < tonumber(ARGV[7]) then lost = 1 end
end
local replaced = -1
if existed and prev[2] == '1' then replaced = prev[1] end
local last, first, trimmed = window(inbox, limit, prev[4] or '0-0')
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
local quota, quota_age = redis.call('GET', KEYS[5]), 0
if quota then
  local q, at = string.match(quota, '^(.*) (%d+)$')
  quota, quota_age = q or false, math.floor(now / 1000) - (tonumber(at) or 0)
end
local point = start  -- a resume from here replays exactly what this connection is given
if cmp(trimmed, point) > 0 then point = trimmed end
-- checks and reads done: from here on, writes
local epoch = now
if existed and tonumber(prev[1]) >= epoch then epoch = tonumber(prev[1]) + 1 end
epoch = fmt(epoch)
local delivered = last
if #replay > 0 then delivered = replay[#replay][1] end
redis.call('HSET', state, 'epoch', epoch, 'started', ARGV[5], 'node', node, 'connected', 1, 'deadline', 0,
           'delivered', delivered)
redis.call('PERSIST', state)
redis.call('PERSIST', inbox)
redis.call('PERSIST', rooms)
if replaced ~= -1 then
  redis.call('PUBLISH', channel, cmsgpack.pack({v = 1, k = 'r', e = tonumber(replaced), n = tonumber(epoch)}))
end
if KEYS[7] then
  redis.call('ZREM', KEYS[6], ARGV[4])
  redis.call('SADD', KEYS[7], ARGV[4])
end
return {epoch, replaced, resumed, bodies(replay), redis.call('SMEMBERS', rooms), delivered, point, lost, quota,
        quota_age}
"""

# KEYS: state, inbox, rooms, quota [, grace schedule]   ARGV: epoch, final 0/1, delivered ('' = unknown),
# grace ms, ttl ms, peer, quota ('' = none), how long a quota is worth keeping (ms)
# -> {0} stale | {1, deadline ms} reconnecting | {2, rooms} gone
DETACH = _KEEPS_ALIVE + _COMMON + """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'epoch', 'connected')
if st[1] ~= ARGV[1] or st[2] ~= '1' then return {0} end
if ARGV[7] ~= '' then  -- the peer's next connection, anywhere, starts from it (quota.py)
  redis.call('SET', KEYS[4], ARGV[7] .. ' ' .. time_ms(), 'PX', ARGV[8])
end
if ARGV[2] == '1' then
  local r = redis.call('SMEMBERS', rooms)
  redis.call('DEL', state, inbox, rooms)
  return {2, r}
end
local deadline = time_ms() + tonumber(ARGV[4])
redis.call('HSET', state, 'connected', 0, 'deadline', deadline)
if ARGV[3] ~= '' then redis.call('HSET', state, 'delivered', ARGV[3]) end
for _, key in ipairs({state, inbox, rooms}) do redis.call('PEXPIRE', key, ARGV[5]) end
if KEYS[5] then redis.call('ZADD', KEYS[5], deadline, ARGV[6]) end
return {1, deadline}
"""

# A node's lease ran out: its connected peers become reconnecting.
# KEYS: state, inbox, rooms [, grace schedule]
# ARGV: dead node, grace ms, ttl ms, peer, end of that node's lease (us; '' = any connection)
# -> the end of the peer's grace (ms) | 0 not that node's (any more) | -1 a connection made
#    there after that lease (the node is back with a new one: not ours to orphan)
ORPHAN = _KEEPS_ALIVE + _COMMON + """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'node', 'connected', 'epoch')
if st[1] ~= ARGV[1] or st[2] ~= '1' then return 0 end
if ARGV[5] ~= '' and tonumber(st[3]) >= tonumber(ARGV[5]) then return -1 end
local deadline = time_ms() + tonumber(ARGV[2])
redis.call('HSET', state, 'connected', 0, 'deadline', deadline)
for _, key in ipairs({state, inbox, rooms}) do redis.call('PEXPIRE', key, ARGV[3]) end
if KEYS[4] then redis.call('ZADD', KEYS[4], deadline, ARGV[4]) end
return deadline
"""

# The grace ran out. KEYS: state, inbox, rooms
# -> false (connected, or gone already) | {0, deadline ms} not yet | {1, rooms, undelivered count}
EXPIRE = _KEEPS_ALIVE + _COMMON + """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'connected', 'deadline', 'delivered')
if st[1] ~= '0' then return false end
local deadline = tonumber(st[2] or '0') or 0  -- (a state written by no path of ours has none)
if deadline > time_ms() then return {0, deadline} end
local undelivered = #redis.call('XRANGE', inbox, '(' .. (st[3] or '0-0'), '+')
local r = redis.call('SMEMBERS', rooms)
redis.call('DEL', state, inbox, rooms)
return {1, r, undelivered}
"""

# KEYS: state, inbox, channel [, sender's state]
# ARGV: body, inbox limit, ttl ms, send key, sender's epoch, retry 0/1, inbox bytes
# -> {0} no peer | {1, seq} delivered | {2, seq} queued
#  | {3} the sender's connection is not registered (Redis lost it, or it is reconnecting)
#  | {4} a newer connection of the sender owns its id
# A retry (the first try's reply was lost: it may have run) looks for its key first, so a
# send runs at most once whatever happens to the replies.
SEND = _COMMON + """
local state, inbox, channel = KEYS[1], KEYS[2], KEYS[3]
local limit = tonumber(ARGV[2])
local st = redis.call('HMGET', state, 'epoch', 'connected', 'deadline')
if ARGV[6] == '1' and st[1] then
  for _, e in ipairs(redis.call('XREVRANGE', inbox, '+', '-', 'COUNT', limit + 1)) do
    local f = e[2]
    if f[4] == ARGV[4] then return {st[2] == '1' and 1 or 2, e[1]} end
  end
end
if KEYS[4] then
  local s = redis.call('HMGET', KEYS[4], 'epoch', 'connected')
  if s[1] and s[1] ~= ARGV[5] then return {4} end
  if s[2] ~= '1' then return {3} end
end
if not st[1] then return {0} end
local live = st[2] == '1'
local now = time_ms()
if not live and tonumber(st[3]) <= now then return {0} end
local id = redis.call('XADD', inbox, '*', 'b', ARGV[1], 'k', ARGV[4])
local bytes = redis.call('HINCRBY', state, 'ib', #ARGV[1] + ENTRY_OVERHEAD)
local length, most = redis.call('XLEN', inbox), tonumber(ARGV[7])
if length > limit or bytes > most then  -- the bounds: the oldest go, never the new one (see the top)
  -- a sixteenth of each bound at a time, so a full inbox is trimmed every 16th send, not every one
  local keep, keep_bytes = limit - math.floor(limit / 16), most - math.floor(most / 16)
  local cut, ids = nil, {}
  while length > 1 and (length > keep or bytes > keep_bytes) do
    local batch = redis.call('XRANGE', inbox, cut and ('(' .. cut) or '-', '+', 'COUNT', 16)
    if #batch == 0 then break end  -- (the count and the stream disagree: never loop for ever)
    for _, e in ipairs(batch) do
      if length <= 1 or (length <= keep and bytes <= keep_bytes) then break end
      bytes, length, cut = bytes - entry_size(e), length - 1, e[1]
      ids[#ids + 1] = cut
    end
  end
  redis.call('XDEL', inbox, unpack(ids))
  redis.call('HSET', state, 'ib', bytes, 'trimmed', cut)
end
if live then
  local heard = redis.call('PUBLISH', channel,
    cmsgpack.pack({v = 1, k = 'd', e = tonumber(st[1]), s = id, b = ARGV[1], t = now}))
  if heard > 0 then return {1, id} end
  return {2, id}  -- its node is not listening (it died): kept for the resume
end
if redis.call('PTTL', inbox) < 0 then redis.call('PEXPIRE', inbox, ARGV[3]) end
return {2, id}
"""

# The connected client certainly has every entry up to a seq (it answered a ping sent after
# them): they leave the inbox; a resume from before them then has a gap, as after a bound.
# Entries younger than the retry horizon stay: a sender whose reply was lost looks for its
# send's key in the inbox when it tries again (SEND), and must find it there.
# KEYS: state, inbox   ARGV: epoch, seq, at most how many, retry horizon ms
# -> 1 everything up to seq is gone | 0 some of it is too young yet (or not this connection's)
TRIM = _KEEPS_ALIVE + _COMMON + """
local state, inbox = KEYS[1], KEYS[2]
local st = redis.call('HMGET', state, 'epoch', 'connected', 'trimmed')
if st[1] ~= ARGV[1] or st[2] ~= '1' or not string.match(ARGV[2], '^%d+-%d+$') then return 0 end
local cutoff = time_ms() - tonumber(ARGV[4])
local freed, ids, young = 0, {}, 0
for _, e in ipairs(redis.call('XRANGE', inbox, '-', ARGV[2], 'COUNT', tonumber(ARGV[3]))) do
  if parse(e[1]) > cutoff then young = 1 break end
  freed, ids[#ids + 1] = freed + entry_size(e), e[1]
end
if #ids == 0 then return 1 - young end
redis.call('XDEL', inbox, unpack(ids))
redis.call('HINCRBY', state, 'ib', -freed)
if not st[3] or cmp(st[3], ids[#ids]) < 0 then redis.call('HSET', state, 'trimmed', ids[#ids]) end
return 1 - young
"""

# The sender's fence alone (Redis Cluster, where its state is in another slot than the
# recipient's). KEYS: sender's state  ARGV: epoch  -> 1 owns its id | 3 not registered | 4 replaced
OWNS = """
local s = redis.call('HMGET', KEYS[1], 'epoch', 'connected')
if s[1] and s[1] ~= ARGV[1] then return 4 end
if s[2] ~= '1' then return 3 end
return 1
"""

# KEYS: peer rooms, peer state   ARGV: room, rooms per peer, epoch ('' = no fence)
# -> -1 fenced (that connection does not own the peer) | 0 too many | 1 added | 2 already there
JOIN_PEER = """
if ARGV[3] ~= '' then
  local s = redis.call('HMGET', KEYS[2], 'epoch', 'connected')
  if s[1] ~= ARGV[3] or s[2] ~= '1' then return -1 end
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: peer rooms, peer state   ARGV: room, epoch ('' = no fence)  -> -1 fenced | 0 not in it | 1 left
LEAVE_PEER = """
if ARGV[2] ~= '' then
  local s = redis.call('HMGET', KEYS[2], 'epoch', 'connected')
  if s[1] ~= ARGV[2] or s[2] ~= '1' then return -1 end
end
return redis.call('SREM', KEYS[1], ARGV[1])
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

# KEYS: the grace zset   ARGV: peer  -> removes the entry only if it is still due
# (a peer that reconnected and dropped again meanwhile has a later deadline to keep)
UNSCHEDULE = _KEEPS_ALIVE + _COMMON + """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= time_ms() then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: the grace zset  ARGV: how many  -> peers whose grace is due by Redis's clock
DUE = _COMMON + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', time_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
"""

# Node leases. KEYS: the nodes zset (node -> end of its lease, ms of Redis's clock; and two
# marks that are not nodes: `~era`, when this data set began, and `~lost`, set when it
# began by losing an earlier one: Redis restarted empty while nodes were serving)
# ARGV: node, lease ms, mode ('join': take a new lease | 'renew': extend the one held),
#       the era the node knew ('' = none: it never held a lease)
# -> {now us, status, era ms, lost 0/1}; status 1: held until now + lease | 0: absent (Redis
#    lost it) | -1: it had run out
LEASE = _KEEPS_ALIVE + _COMMON + """
local nodes = KEYS[1]
local us = time_us()
local now = math.floor(us / 1000)
local era = redis.call('ZSCORE', nodes, '~era')
local status = 1
if ARGV[3] == 'renew' then
  local until_ = redis.call('ZSCORE', nodes, ARGV[1])
  if not until_ then status = 0 elseif tonumber(until_) < now then status = -1 end
end
-- checks done: from here on, writes
if not era then
  era = now
  redis.call('ZADD', nodes, era, '~era')
  if ARGV[4] ~= '' then redis.call('ZADD', nodes, era, '~lost') end
elseif ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(era) then
  redis.call('ZADD', nodes, 'NX', era, '~lost')  -- this node served in an earlier data set
end
if status == 1 then redis.call('ZADD', nodes, now + tonumber(ARGV[2]), ARGV[1]) end
local lost = redis.call('ZSCORE', nodes, '~lost') and 1 or 0
return {fmt(us), status, tonumber(era), lost}
"""

# A node found evidence that Redis lost its data (see ATTACH): the current data set began
# by a loss. KEYS: the nodes zset  -> its era (ms), or false if it has none yet
MARK_LOST = _KEEPS_ALIVE + """
local era = redis.call('ZSCORE', KEYS[1], '~era')
if era then redis.call('ZADD', KEYS[1], 'NX', era, '~lost') end
return era
"""

# KEYS: the nodes zset   -> {node, end of its lease (ms)...} for leases run out by Redis's clock
DEAD_NODES = _COMMON + """
local out = {}
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. time_ms(), 'WITHSCORES')
for i = 1, #dead, 2 do
  if string.sub(dead[i], 1, 1) ~= '~' then
    out[#out + 1] = dead[i]
    out[#out + 1] = dead[i + 1]
  end
end
return out
"""

# KEYS: the nodes zset   ARGV: node -> drops it only if its lease is still out (it may have
# taken a new one since the sweeper read it)
FORGET_NODE = _KEEPS_ALIVE + _COMMON + """
local until_ = redis.call('ZSCORE', KEYS[1], ARGV[1])
if until_ and tonumber(until_) < time_ms() then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# This node holds a live connection of the peer and its lease never lapsed, but it lost
# its pub/sub connection or Redis lost data (restart, failover to a lagging replica).
# KEYS: state, inbox, rooms   ARGV: epoch, node, last seq handed to the connection, inbox limit, rooms...
# (its rooms go back into the peer's set in the same step: a resume elsewhere finds them)
# -> {0} the connection does not own the peer (any more): close it so the client resumes
#  | {1, replay {{id, body}...}} it owns it: what reached the inbox after last seq, to hand
#    over before anything newer | {3} it owns it but the bound cut into that gap
#  | {2, replay} restored from nothing (new seqs follow last seq; a resume from before it has a
#    gap): what senders handed in again that this connection never had (REPLAY); {3} if they
#    handed in more than the inbox bound
REGISTER = _KEEPS_ALIVE + _COMMON + """
local state, inbox, rooms = KEYS[1], KEYS[2], KEYS[3]
local st = redis.call('HMGET', state, 'epoch', 'connected', 'node', 'trimmed')
if st[1] then
  if st[1] ~= ARGV[1] or st[2] ~= '1' or st[3] ~= ARGV[2] then return {0} end
  local last, first, trimmed = window(inbox, ARGV[4], st[4] or '0-0')
  if cmp(trimmed, ARGV[3]) > 0 then return {3} end
  local replay = redis.call('XRANGE', inbox, '(' .. ARGV[3], '+')
  for _, key in ipairs({state, inbox, rooms}) do redis.call('PERSIST', key) end
  if #ARGV > 4 then redis.call('SADD', rooms, unpack(ARGV, 5)) end
  return {1, bodies(replay)}
end
if not string.match(ARGV[3], '^%d+-%d+$') then return redis.error_reply('REGISTER: bad seq') end
-- senders may have handed in again what they had acked before the loss (REPLAY): what this
-- connection never had stays, in order; what it had goes (`o`: the seq it was first given)
local keep, had, bytes, last = {}, {}, 0, nil
if redis.call('EXISTS', inbox) == 1 then
  last = window(inbox, 0, '0-0')
  local entries = redis.call('XRANGE', inbox, '-', '+', 'COUNT', tonumber(ARGV[4]) + 1)
  -- more than the inbox bound: this connection cannot be given them all, as after a cut
  if #entries > tonumber(ARGV[4]) then return {3} end
  for _, e in ipairs(entries) do
    local f, first = e[2], e[1]
    for j = 1, #f, 2 do if f[j] == 'o' then first = f[j + 1] end end
    if cmp(first, ARGV[3]) > 0 then
      keep[#keep + 1], bytes = e, bytes + entry_size(e)
    else
      had[#had + 1] = e[1]
    end
  end
end
redis.call('HSET', state, 'epoch', ARGV[1], 'started', 0, 'node', ARGV[2], 'connected', 1, 'deadline', 0,
           'delivered', ARGV[3], 'trimmed', ARGV[3], 'restored', ARGV[3], 'ib', bytes)
for i = 1, #had, 1000 do redis.call('XDEL', inbox, unpack(had, i, math.min(i + 999, #had))) end
if not last then
  -- new seqs must follow the ones this peer already has: start the stream at ARGV[3] (a
  -- sender's REPLAY of the seq after it then keeps that seq)
  if ARGV[3] ~= '0-0' then redis.call('XDEL', inbox, redis.call('XADD', inbox, ARGV[3], 'b', '', 'k', '')) end
else
  redis.call('PERSIST', inbox)
  if cmp(last, ARGV[3]) < 0 then redis.call('XSETID', inbox, ARGV[3]) end
end
if #ARGV > 4 then redis.call('SADD', rooms, unpack(ARGV, 5)) end
return {2, bodies(keep)}
"""

# A message this node acked before Redis lost its data set, handed in again (retention.py).
# Only a peer that was connected through the loss (`restored`: REGISTER) or whose node has
# not registered it again yet (no state) can be missing it; the seq it was first given
# says whether it had it. It keeps that seq unless newer ones were given meanwhile.
# KEYS: state, inbox, channel   ARGV: seq, body, the send's key, grace ms
# -> 0 nothing to do (it is there, the peer had it, or it connected afresh since the loss)
#  | 1 handed to the peer's node | 2 waiting in its inbox
REPLAY = _COMMON + """
local state, inbox, channel = KEYS[1], KEYS[2], KEYS[3]
local seq = ARGV[1]
if not string.match(seq, '^%d+-%d+$') then return redis.error_reply('REPLAY: bad seq') end
-- there already: given that seq after the loss, or handed in by an earlier try (the newest few)
for _, e in ipairs(redis.call('XREVRANGE', inbox, '+', seq, 'COUNT', 32)) do
  local f = e[2]
  for j = 1, #f, 2 do if f[j] == 'k' and f[j + 1] == ARGV[3] then return 0 end end
end
local st = redis.call('HMGET', state, 'epoch', 'connected', 'restored')
if st[1] and (not st[3] or cmp(seq, st[3]) <= 0) then return 0 end
local last = window(inbox, 0, '0-0')
local id
if cmp(seq, last) > 0 then
  id = redis.call('XADD', inbox, seq, 'b', ARGV[2], 'k', ARGV[3])
else
  id = redis.call('XADD', inbox, '*', 'b', ARGV[2], 'k', ARGV[3], 'o', seq)
end
if not st[1] then
  if redis.call('PTTL', inbox) < 0 then redis.call('PEXPIRE', inbox, ARGV[4]) end
  return 2
end
redis.call('HINCRBY', state, 'ib', #ARGV[2] + ENTRY_OVERHEAD)
if st[2] ~= '1' then return 2 end
local heard = redis.call('PUBLISH', channel,
  cmsgpack.pack({v = 1, k = 'd', e = tonumber(st[1]), s = id, b = ARGV[2], t = time_ms()}))
return heard > 0 and 1 or 2
"""

NAMES = ("ATTACH", "DETACH", "ORPHAN", "EXPIRE", "SEND", "TRIM", "OWNS", "JOIN_PEER", "LEAVE_PEER", "JOIN_ROOM",
         "LEAVE_ROOM", "MEMBERS_IF_IN", "UNSCHEDULE", "DUE", "LEASE", "MARK_LOST", "DEAD_NODES", "FORGET_NODE",
         "REGISTER", "REPLAY")
