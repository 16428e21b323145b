"""Lua scripts: every check-then-write happens atomically inside Redis.

Stored list items are ``<expires_ms>|D|<full channel>|<data>`` (one message for one channel)
or ``<expires_ms>|F|<local1,local2,...>|<data>`` (one group message for several channels of
one process, fanned out by that process). A group message of a group with history is
``DH``/``FH`` instead, with its position after the field:
``<expires_ms>|FH|<locals>|<group>,<offset>,<epoch>|<data>``. Names never contain ``|`` or ``,``.

One clock: every expiry, delay and group expiry is computed from Redis ``TIME`` inside the
scripts, and what a receiver needs (how long an item has left to live) is computed there
too, so no host's own clock is ever compared with another's. Scripts that read ``TIME`` and
then write are not deterministic; Redis >= 5 replicates their effects (not the script) by
default, and on 3.2-4 ``redis.replicate_commands()`` asks for that (it is a no-op on 7).
"""

from __future__ import annotations

from typing import Final

_NOW: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(x) return string.format('%.0f', x) end
local function expired_head(key)
  local head = redis.call('LINDEX', key, 0)
  if not head then return nil end
  local exp = tonumber(string.match(head, '^(%d+)|'))
  if exp and exp <= now then return head end
  return nil
end
local function trim_expired(key)
  for _ = 1, 1000 do
    if not expired_head(key) then return end
    redis.call('LPOP', key)
  end
end
local function count(stats, field)
  redis.call('HINCRBY', stats, field, 1)
  redis.call('EXPIRE', stats, 86400)
end
"""

#: KEYS: list, channel stats, global stats, the channel's stamps (see below).
#: ARGV: capacity, expiry (s), full channel, data, then stamps to forget (see below).
#: Returns 1 if queued, 0 if the channel is full.
#:
#: A channel's capacity is its own. For a plain channel the list is the channel: its length is
#: what waits. A process-specific channel ``prefix!local`` shares its prefix's list, so it
#: keeps its own count: a list of *stamps* ``<prefix>:n:<full channel>``, one per message sent
#: and not yet taken, each the message's expiry (the same string as the item's). A stamp
#: whose time has come is dropped here (its message expired, taken or not), so the count
#: heals itself; the owning process forgets the stamps of messages it took (``LREM``, with
#: its next pop or here, after ARGV[4]). The stamps list lives as long as the channel's list.
SEND: Final = (
    _NOW
    + """
local cap = tonumber(ARGV[1])
local exp = tonumber(ARGV[2]) * 1000
local stamp = fmt(now + exp)
local stamps = nil
if string.find(ARGV[3], '!', 1, true) then stamps = KEYS[4] end
local full
if stamps then
  for i = 5, #ARGV do redis.call('LREM', stamps, 1, ARGV[i]) end
  full = redis.call('LLEN', stamps) >= cap
  if full then
    for _ = 1, 1000 do
      local head = redis.call('LINDEX', stamps, 0)
      if not head or tonumber(head) > now then break end
      redis.call('LPOP', stamps)
    end
    full = redis.call('LLEN', stamps) >= cap
  end
else
  full = redis.call('LLEN', KEYS[1]) >= cap
  if full then
    trim_expired(KEYS[1])
    full = redis.call('LLEN', KEYS[1]) >= cap
  end
end
if full then
  count(KEYS[2], 'channel_full_count')
  count(KEYS[3], 'channel_full_count')
  return 0
end
redis.call('RPUSH', KEYS[1], stamp .. '|D|' .. ARGV[3] .. '|' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(exp) + 1000)
if stamps then
  redis.call('RPUSH', stamps, stamp)
  redis.call('PEXPIRE', stamps, math.ceil(exp) + 1000)
end
count(KEYS[2], 'messages_count')
count(KEYS[3], 'messages_count')
return 1
"""
)

# --------------------------------------------------------------------------- groups
#
# A group is: a sorted set ``g:<group>`` of members scored by add time (ms, Redis TIME), a hash
# ``gc:`` of each member's capacity, a hash ``gi:`` of the presence info of members that have
# one, and a set ``gt:`` of the process prefixes (``interface.<id>!``) whose heartbeat key
# ``hb:<prefix>`` existed when one of their channels was added: their members leave as soon as
# that key lapses (the process died). Groups with presence events or tracked prefixes are
# listed in the hash ``pg`` (group -> events 0/1) for the sweep.
#
# A group with history also has a stream ``h:<group>`` (entry id ``<offset>-0``, field ``d``:
# the sealed message) trimmed with ``MAXLEN ~ size`` and expiring ``ttl`` after the last send,
# and a hash ``hm:<group>`` (``epoch``, ``offset``) that lives ``max(ttl, group expiry)`` after
# the last use. Only the last ``size`` offsets count as held (``~`` may keep a few more).
# List items of such a group's messages are ``<expires>|DH|<channel>|<group>,<offset>,<epoch>|<data>``
# and ``<expires>|FH|<locals>|<group>,<offset>,<epoch>|<data>``.

_GROUP_LIB: Final = """
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
local function split_member(lp, m)
  local bang = string.find(m, '!', 1, true)
  if bang then return lp .. string.sub(m, 1, bang), string.sub(m, bang + 1), string.sub(m, 1, bang) end
  return lp .. m, nil, nil
end
local function head_is_for(head, m, loc)
  local _, kind, field = string.match(head, '^(%d+)|(%a+)|([^|]*)|')
  if not kind then return false end
  kind = string.sub(kind, 1, 1)
  return (kind == 'D' and field == m) or (kind == 'F' and loc ~= nil and string.find(',' .. field .. ',', ',' .. loc .. ',', 1, true) ~= nil)
end
local function group_of(zset, caps, infos, tracked, events)
  return {zset = zset, caps = caps, infos = infos, tracked = tracked, events = events, left = {}}
end
local function leave(G, m)
  if G.events then
    G.left[#G.left + 1] = m
    G.left[#G.left + 1] = redis.call('HGET', G.infos, m) or ''
  end
  redis.call('ZREM', G.zset, m)
  redis.call('HDEL', G.caps, m)
  redis.call('HDEL', G.infos, m)
end
-- Remove the members whose membership lapsed or whose process stopped heartbeating; return
-- how many left and the dead prefixes (nil if none).
local function evict_gone(G, gexp, hbp)
  local gone = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', G.zset, '-inf', '(' .. fmt(now - gexp))) do
    leave(G, m)
    gone = gone + 1
  end
  local dead = nil
  for _, p in ipairs(redis.call('SMEMBERS', G.tracked)) do
    if redis.call('EXISTS', hbp .. p) == 0 then
      dead = dead or {}
      dead[p] = true
      redis.call('SREM', G.tracked, p)
    end
  end
  return gone, dead
end
local function live_members(G, gexp, hbp)
  local gone, dead = evict_gone(G, gexp, hbp)
  local members = redis.call('ZRANGE', G.zset, 0, -1)
  if dead then
    local alive = {}
    for _, m in ipairs(members) do
      local bang = string.find(m, '!', 1, true)
      if bang and dead[string.sub(m, 1, bang)] then
        leave(G, m)
        gone = gone + 1
      else
        alive[#alive + 1] = m
      end
    end
    members = alive
  end
  return members, gone
end
local function history_meta(stream, meta, token, meta_ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  local latest = 0
  if epoch then
    latest = tonumber(redis.call('HGET', meta, 'offset'))
  else
    epoch = token
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  return epoch, latest
end
local function history_append(stream, meta, token, size, ttl, meta_ttl, data)
  local epoch = history_meta(stream, meta, token, meta_ttl)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', stream, 'MAXLEN', '~', size, fmt(offset) .. '-0', 'd', data)
  redis.call('PEXPIRE', stream, ttl)
  return epoch, offset
end
-- The held entries from offset `first` on (at most `count`, all if nil) as {{offset, data}...}.
local function history_range(stream, latest, size, first, count)
  first = math.max(first, latest - size + 1, 1)
  if first > latest or count == 0 then return {} end
  local found
  if count then
    found = redis.call('XRANGE', stream, fmt(first) .. '-0', '+', 'COUNT', count)
  else
    found = redis.call('XRANGE', stream, fmt(first) .. '-0', '+')
  end
  local out = {}
  for _, e in ipairs(found) do
    out[#out + 1] = {tonumber(string.match(e[1], '^(%d+)')), e[2][2]}
  end
  return out
end
local function history_item(expires, m, loc, pos, data)
  if loc then return fmt(expires) .. '|FH|' .. loc .. '|' .. pos .. '|' .. data end
  return fmt(expires) .. '|DH|' .. m .. '|' .. pos .. '|' .. data
end
"""

_GROUP: Final = _NOW + _GROUP_LIB

#: KEYS: zset, caps, infos, tracked, registry, stream, meta, member's list, list stats, global stats.
#: ARGV: channel, capacity, group expiry (s), info ('' for none), heartbeat key of the member's
#: process ('' for a channel without '!'), its prefix, group, events (0/1), mode ('add' or
#: 'recover'), then for 'recover': epoch ('': replay the latest <offset> messages), offset,
#: history size (0: none), meta ttl (ms), new epoch token, expiry (s), push (1 if the
#: member's list is on this server).
#: Adds (or refreshes) the member; for 'recover' also decides whether its position can be
#: recovered (the rule of layers.groups.recovery_problem) and, with push, queues the replay.
#: Returns {new (0/1), problem ('' if none), epoch, latest offset, {{offset, data}...}}.
GROUP_ADD: Final = (
    _GROUP
    + """
local m = ARGV[1]
local gexp = math.ceil(tonumber(ARGV[3]) * 1000)
local new = redis.call('ZADD', KEYS[1], now, m)
redis.call('HSET', KEYS[2], m, ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], m, ARGV[4]) else redis.call('HDEL', KEYS[3], m) end
redis.call('PEXPIRE', KEYS[1], gexp)
redis.call('PEXPIRE', KEYS[2], gexp)
redis.call('PEXPIRE', KEYS[3], gexp)
local registered = ARGV[8] == '1'
if ARGV[5] ~= '' and redis.call('EXISTS', ARGV[5]) == 1 then
  redis.call('SADD', KEYS[4], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], gexp)
  registered = true
end
if registered then redis.call('HSET', KEYS[5], ARGV[7], ARGV[8]) end
if ARGV[9] ~= 'recover' then return {new} end
local size = tonumber(ARGV[12])
if size == 0 then return {new, 'no history', '', 0, {}} end
local epoch, latest = history_meta(KEYS[6], KEYS[7], ARGV[14], tonumber(ARGV[13]))
local since = tonumber(ARGV[11])
local problem = ''
local entries = {}
if ARGV[10] == '' then
  if since > 0 then entries = history_range(KEYS[6], latest, size, latest - since + 1, nil) end
elseif ARGV[10] ~= epoch then
  problem = 'epoch'
elseif since > latest then
  problem = 'ahead'
elseif since < latest then
  entries = history_range(KEYS[6], latest, size, since + 1, nil)
  if since < latest - size or #entries ~= latest - since then
    problem = 'trimmed'
    entries = {}
  end
end
if problem == '' and #entries > 0 and ARGV[16] == '1' then
  local cap = tonumber(ARGV[2])
  if redis.call('LLEN', KEYS[8]) + #entries > cap then trim_expired(KEYS[8]) end
  if redis.call('LLEN', KEYS[8]) + #entries > cap then
    problem = 'no room'
    entries = {}
  else
    local exp = tonumber(ARGV[15]) * 1000
    local _, loc = split_member('', m)
    for _, e in ipairs(entries) do
      redis.call('RPUSH', KEYS[8], history_item(now + exp, m, loc, ARGV[7] .. ',' .. fmt(e[1]) .. ',' .. epoch, e[2]))
      count(KEYS[9], 'messages_count')
      count(KEYS[10], 'messages_count')
    end
    redis.call('PEXPIRE', KEYS[8], math.ceil(exp) + 1000)
  end
end
return {new, problem, epoch, latest, entries}
"""
)

#: KEYS: zset, caps, infos. ARGV: channel. Returns {removed (0/1), info ('' for none)}.
GROUP_DISCARD: Final = """
local info = redis.call('HGET', KEYS[3], ARGV[1]) or ''
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return {removed, info}
"""

#: KEYS: zset, caps, infos, tracked, stream, meta. ARGV: group expiry (s), heartbeat key
#: prefix, events (0/1), what ('members', 'presence', or 'send': store the message in the
#: history first), then for 'send': history size (0: none), ttl (ms), meta ttl (ms), new epoch
#: token, data. Returns {members, left members {m, info, ...}, how many left, epoch, offset,
#: infos (for 'presence': HGETALL of the infos)}.
GROUP_MEMBERS: Final = (
    _GROUP
    + """
local G = group_of(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3] == '1')
local epoch, offset = '', 0
if ARGV[4] == 'send' and tonumber(ARGV[5]) > 0 then
  epoch, offset = history_append(KEYS[5], KEYS[6], ARGV[8], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[9])
end
local members, gone = live_members(G, tonumber(ARGV[1]) * 1000, ARGV[2])
local infos = {}
if ARGV[4] == 'presence' then infos = redis.call('HGETALL', KEYS[3]) end
return {members, G.left, gone, epoch, offset, infos}
"""
)

#: KEYS: zset, caps, infos, tracked, global stats, stream, meta.
#: ARGV: list key prefix, stats key prefix, group expiry (s), expiry (s), default capacity,
#: data, heartbeat key prefix, events (0/1), group, history size (0: none), ttl (ms), meta ttl
#: (ms), new epoch token, then the channels to leave out.
#: Stores the message in the history (if any), then sends it to every live member whose list
#: lives on this server: one item per list (members of one process share one fan-out item). A
#: member whose own message expired unread is evicted. Returns {delivered, full, expired,
#: offset, epoch, {full channels (at most 16)}, {left members m, info, ...}}.
GROUP_SEND: Final = (
    _GROUP
    + """
local G = group_of(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[8] == '1')
local epoch, offset, pos = '', 0, nil
if tonumber(ARGV[10]) > 0 then
  epoch, offset = history_append(KEYS[6], KEYS[7], ARGV[13], tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[6])
  pos = ARGV[9] .. ',' .. fmt(offset) .. ',' .. epoch
end
local members, gone = live_members(G, tonumber(ARGV[3]) * 1000, ARGV[7])
local excluded = {}
for i = 14, #ARGV do excluded[ARGV[i]] = true end
local exp = tonumber(ARGV[4]) * 1000
local default_cap = tonumber(ARGV[5])
local caps = hmget_all(KEYS[2], members)
local order, targets = {}, {}
for i, m in ipairs(members) do
  local key, loc = split_member(ARGV[1], m)
  local head = expired_head(key)
  if head then
    if head_is_for(head, m, loc) then
      leave(G, m)
      gone = gone + 1
      m = nil
    end
    trim_expired(key)
  end
  if m and not excluded[m] then
    local target = targets[key]
    if not target then
      target = {cap = tonumber(caps[i]) or default_cap, channel = m, locals = {}, members = {}}
      targets[key] = target
      order[#order + 1] = key
    end
    target.members[#target.members + 1] = m
    if loc then target.locals[#target.locals + 1] = loc end
  end
end
local delivered, full, full_channels = 0, 0, {}
for _, key in ipairs(order) do
  local target = targets[key]
  local stats = ARGV[2] .. string.sub(key, string.len(ARGV[1]) + 1)
  if redis.call('LLEN', key) < target.cap then
    local kind, field = 'D', target.channel
    if #target.locals > 0 then kind, field = 'F', table.concat(target.locals, ',') end
    local item
    if pos then
      item = fmt(now + exp) .. '|' .. kind .. 'H|' .. field .. '|' .. pos .. '|' .. ARGV[6]
    else
      item = fmt(now + exp) .. '|' .. kind .. '|' .. field .. '|' .. ARGV[6]
    end
    redis.call('RPUSH', key, item)
    redis.call('PEXPIRE', key, math.ceil(exp) + 1000)
    count(stats, 'messages_count')
    count(KEYS[5], 'messages_count')
    delivered = delivered + #target.members
  else
    count(stats, 'channel_full_count')
    count(KEYS[5], 'channel_full_count')
    full = full + #target.members
    for _, m in ipairs(target.members) do
      if #full_channels < 16 then full_channels[#full_channels + 1] = m end
    end
  end
end
return {delivered, full, gone, offset, epoch, full_channels, G.left}
"""
)

#: The sharded group send, for one list. KEYS: list, list stats, global stats, recovery hold,
#: recovery side list. ARGV: capacity, expiry (s), kind ('D' or 'F'), members
#: (comma-separated full names), data, position ('' for none: '<group>,<offset>,<epoch>').
#: Members whose own message at the head expired unread are left out and returned, so the
#: caller can evict them from the group. While a recovery holds the list (RECOVER_PUSH) the
#: item waits in the side list. Returns {delivered members, full members, evicted members...}.
GROUP_PUSH: Final = (
    _GROUP
    + """
local exp = tonumber(ARGV[2]) * 1000
local members = {}
for m in string.gmatch(ARGV[4], '[^,]+') do members[#members + 1] = m end
local evicted = {}
local head = expired_head(KEYS[1])
if head then
  local keep = {}
  for _, m in ipairs(members) do
    local _, loc = split_member('', m)
    if head_is_for(head, m, loc) then evicted[#evicted + 1] = m else keep[#keep + 1] = m end
  end
  members = keep
  trim_expired(KEYS[1])
end
local target = KEYS[1]
local waiting = redis.call('LLEN', KEYS[1])
if redis.call('EXISTS', KEYS[4]) == 1 then
  target = KEYS[5]
  waiting = waiting + redis.call('LLEN', KEYS[5])
elseif redis.call('EXISTS', KEYS[5]) == 1 then
  -- a recovery that never finished (its process died): release what it held back
  for _ = 1, redis.call('LLEN', KEYS[5]) do redis.call('RPUSH', KEYS[1], redis.call('LPOP', KEYS[5])) end
end
local delivered, full = 0, 0
if #members > 0 then
  if waiting < tonumber(ARGV[1]) then
    local field
    if ARGV[3] == 'F' then
      local locals = {}
      for _, m in ipairs(members) do locals[#locals + 1] = string.sub(m, string.find(m, '!', 1, true) + 1) end
      field = table.concat(locals, ',')
    else
      field = members[1]
    end
    local item
    if ARGV[6] ~= '' then
      item = fmt(now + exp) .. '|' .. ARGV[3] .. 'H|' .. field .. '|' .. ARGV[6] .. '|' .. ARGV[5]
    else
      item = fmt(now + exp) .. '|' .. ARGV[3] .. '|' .. field .. '|' .. ARGV[5]
    end
    redis.call('RPUSH', target, item)
    redis.call('PEXPIRE', target, math.ceil(exp) + 1000)
    count(KEYS[2], 'messages_count')
    count(KEYS[3], 'messages_count')
    delivered = #members
  else
    count(KEYS[2], 'channel_full_count')
    count(KEYS[3], 'channel_full_count')
    full = #members
  end
end
local result = {delivered, full}
for _, m in ipairs(evicted) do result[#result + 1] = m end
return result
"""
)

#: The second half of a recovery whose member's list is on another server than its group.
#: KEYS: list, recovery hold, recovery side list, list stats, global stats. ARGV: capacity,
#: expiry (s), channel, position prefix ('<group>,'), epoch, then offset, data, offset, data...
#: Queues the replay, then what group sends queued in the side list while the hold lasted,
#: and lifts the hold. Returns 1, or 0 if the replay did not fit (nothing of it was queued).
RECOVER_PUSH: Final = (
    _GROUP
    + """
local exp = tonumber(ARGV[2]) * 1000
local replay = (#ARGV - 5) / 2
local ok = 1
if replay > 0 then
  trim_expired(KEYS[1])
  if redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[3]) + replay > tonumber(ARGV[1]) then
    ok = 0
  else
    local _, loc = split_member('', ARGV[3])
    for i = 6, #ARGV, 2 do
      redis.call('RPUSH', KEYS[1], history_item(now + exp, ARGV[3], loc, ARGV[4] .. ARGV[i] .. ',' .. ARGV[5], ARGV[i + 1]))
      count(KEYS[4], 'messages_count')
      count(KEYS[5], 'messages_count')
    end
  end
end
for _ = 1, redis.call('LLEN', KEYS[3]) do redis.call('RPUSH', KEYS[1], redis.call('LPOP', KEYS[3])) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], math.ceil(exp) + 1000) end
redis.call('DEL', KEYS[2])
return ok
"""
)

#: KEYS: stream, meta. ARGV: new epoch token, meta ttl (ms), size, since (-1: none), limit
#: (-1: none). Returns {epoch, latest offset, {{offset, data}...}} (see BaseChannelLayer.group_history).
HISTORY_READ: Final = (
    _GROUP
    + """
local epoch, latest = history_meta(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
local size, since, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local entries
if since >= 0 then
  entries = history_range(KEYS[1], latest, size, since + 1, limit >= 0 and limit or nil)
elseif limit >= 0 then
  entries = history_range(KEYS[1], latest, size, latest - limit + 1, nil)
else
  entries = history_range(KEYS[1], latest, size, 1, nil)
end
return {epoch, latest, entries}
"""
)

#: KEYS: this process's heartbeat keys. ARGV: their time to live (ms). Sets them; returns for
#: each whether it still existed (0: it lapsed, or was never set).
HEARTBEAT: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('EXISTS', key)
  redis.call('SET', key, '1', 'PX', ARGV[1])
end
return out
"""

#: KEYS: the registry of groups to sweep, the sweep lock. ARGV: key prefix ('<prefix>:'),
#: group expiry (s), heartbeat key prefix, lock time (ms). Unless another process swept within
#: the lock time: removes every lapsed member and every member of a process that stopped
#: heartbeating from the registered groups. Returns {group, {m, info, ...}, ...} for the
#: groups with presence events that lost members.
SWEEP: Final = (
    _GROUP
    + """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then return {} end
local out = {}
local registry = redis.call('HGETALL', KEYS[1])
for i = 1, #registry, 2 do
  local group, events = registry[i], registry[i + 1] == '1'
  local zset = ARGV[1] .. 'g:' .. group
  if redis.call('EXISTS', zset) == 0 then
    redis.call('HDEL', KEYS[1], group)
  else
    local G = group_of(zset, ARGV[1] .. 'gc:' .. group, ARGV[1] .. 'gi:' .. group, ARGV[1] .. 'gt:' .. group, events)
    local _, dead = evict_gone(G, tonumber(ARGV[2]) * 1000, ARGV[3])
    if dead then
      for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
        local bang = string.find(m, '!', 1, true)
        if bang and dead[string.sub(m, 1, bang)] then leave(G, m) end
      end
    end
    if #G.left > 0 then
      out[#out + 1] = group
      out[#out + 1] = G.left
    end
  end
end
return out
"""
)

#: KEYS: the delayed zset. ARGV: delay (s), member. Schedules member at now + delay.
DELAY_ADD: Final = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], fmt(now + tonumber(ARGV[1]) * 1000), ARGV[2])
return 1
"""
)

#: KEYS: the delayed zset, global stats. ARGV: list key prefix, stats key prefix, expiry (s).
#: Members are ``<id>|<capacity>|<full channel>|<list name>|<data>``. Moves every due member
#: (up to 200) to its list; returns {moved, dropped_full, ms until the next due or -1}.
DELAY_DUE: Final = (
    _NOW
    + """
local exp = tonumber(ARGV[3]) * 1000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, 200)
local moved, dropped = 0, 0
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local _, cap, channel, name, data = string.match(member, '^([^|]*)|(%d+)|([^|]*)|([^|]*)|(.*)$')
    local key = ARGV[1] .. name
    local stats = ARGV[2] .. name
    trim_expired(key)
    if redis.call('LLEN', key) < tonumber(cap) then
      redis.call('RPUSH', key, fmt(now + exp) .. '|D|' .. channel .. '|' .. data)
      redis.call('PEXPIRE', key, math.ceil(exp) + 1000)
      count(stats, 'messages_count')
      count(KEYS[2], 'messages_count')
      moved = moved + 1
    else
      count(stats, 'channel_full_count')
      count(KEYS[2], 'channel_full_count')
      dropped = dropped + 1
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {moved, dropped, wait}
"""
)

#: KEYS: a list. Returns {length, ms since the oldest live item was sent or -1} (after trimming
#: expired items from the head). ARGV: expiry (s).
LIST_STATS: Final = (
    _NOW
    + """
trim_expired(KEYS[1])
local head = redis.call('LINDEX', KEYS[1], 0)
local age = -1
if head then
  local e = tonumber(string.match(head, '^(%d+)|'))
  if e then age = math.max(0, now - (e - tonumber(ARGV[1]) * 1000)) end
end
return {redis.call('LLEN', KEYS[1]), age}
"""
)

#: KEYS: lists, in the order to try. ARGV: how many items at most. Non-blocking: returns a
#: flat {key, ms to live, item, key, ms to live, item, ...} of the live items it popped (as many
#: as there are receivers waiting); expired items on the way are dropped. Used by
#: ``receive_nowait``, and on Redis < 7 pipelined behind a ``BLPOP`` (Redis 7 has ``BLMPOP``).
POP_MANY: Final = (
    _NOW
    + """
local want = tonumber(ARGV[1])
local out = {}
for _, key in ipairs(KEYS) do
  while want > 0 do
    local item = redis.call('LPOP', key)
    if not item then break end
    local ttl = tonumber(string.match(item, '^(%d+)|')) - now
    if ttl > 0 then
      out[#out + 1] = key
      out[#out + 1] = ttl
      out[#out + 1] = item
      want = want - 1
    end
  end
  if want == 0 then break end
end
return out
"""
)
