"""Lua scripts: every check-then-write happens atomically inside Redis.

Stored list items are ``<expires_ms>|D|<full channel>|<data>`` (one message for one channel)
or ``<expires_ms>|F|<local1,local2,...>|<data>`` (one group message for several channels of
one process, fanned out by that process). Names never contain ``|`` or ``,``.

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

#: KEYS: group zset, group capacities hash. ARGV: channel, capacity, group expiry (s).
GROUP_ADD: Final = (
    _NOW
    + """
local gexp = math.ceil(tonumber(ARGV[3]) * 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], gexp)
redis.call('PEXPIRE', KEYS[2], gexp)
return 1
"""
)

_LIVE_MEMBERS: Final = """
local gexp = tonumber(ARGV_GEXP) * 1000
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(now - gexp))
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
"""

#: KEYS: group zset, group capacities hash. ARGV: group expiry (s). Returns the live members.
GROUP_MEMBERS: Final = _NOW + _LIVE_MEMBERS.replace("ARGV_GEXP", "ARGV[1]") + "\nreturn members\n"

#: KEYS: group zset, group capacities hash, global stats.
#: ARGV: list key prefix, stats key prefix, group expiry (s), expiry (s), default capacity, data.
#: Sends to every live member whose list lives on this server: one item per list (members of
#: one process share one fan-out item). A member whose own message expired unread is evicted.
#: Returns {queued, full, evicted}.
GROUP_SEND: Final = (
    _NOW
    + _LIVE_MEMBERS.replace("ARGV_GEXP", "ARGV[3]")
    + """
local exp = tonumber(ARGV[4]) * 1000
local default_cap = tonumber(ARGV[5])
local caps = {}
if #members > 0 then caps = redis.call('HMGET', KEYS[2], unpack(members)) end
local order, targets = {}, {}
local evicted = 0
for i, m in ipairs(members) do
  local bang = string.find(m, '!', 1, true)
  local key, loc = ARGV[1] .. m, nil
  if bang then
    key = ARGV[1] .. string.sub(m, 1, bang)
    loc = string.sub(m, bang + 1)
  end
  local gone = false
  local head = expired_head(key)
  if head then
    local _, kind, field = string.match(head, '^(%d+)|(%a)|([^|]*)|')
    if (kind == 'D' and field == m) or (kind == 'F' and loc and string.find(',' .. field .. ',', ',' .. loc .. ',', 1, true)) then
      redis.call('ZREM', KEYS[1], m)
      redis.call('HDEL', KEYS[2], m)
      evicted = evicted + 1
      gone = true
    end
    trim_expired(key)
  end
  if not gone then
    local target = targets[key]
    if not target then
      target = {cap = tonumber(caps[i]) or default_cap, channel = m, locals = {}}
      targets[key] = target
      order[#order + 1] = key
    end
    if loc then target.locals[#target.locals + 1] = loc end
  end
end
local queued, full = 0, 0
for _, key in ipairs(order) do
  local target = targets[key]
  if redis.call('LLEN', key) < target.cap then
    local item
    if #target.locals > 0 then
      item = fmt(now + exp) .. '|F|' .. table.concat(target.locals, ',') .. '|' .. ARGV[6]
    else
      item = fmt(now + exp) .. '|D|' .. target.channel .. '|' .. ARGV[6]
    end
    redis.call('RPUSH', key, item)
    redis.call('PEXPIRE', key, math.ceil(exp) + 1000)
    local stats = ARGV[2] .. string.sub(key, string.len(ARGV[1]) + 1)
    count(stats, 'messages_count')
    count(KEYS[3], 'messages_count')
    queued = queued + 1
  else
    local stats = ARGV[2] .. string.sub(key, string.len(ARGV[1]) + 1)
    count(stats, 'channel_full_count')
    count(KEYS[3], 'channel_full_count')
    full = full + 1
  end
end
return {queued, full, evicted}
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

#: The sharded group send, for one list. KEYS: list, list stats, global stats.
#: ARGV: capacity, expiry (s), kind ('D' or 'F'), members (comma-separated full names), data.
#: Members whose own message at the head expired unread are left out and returned, so the
#: caller can evict them from the group. Returns {queued (0/1), evicted members...}.
GROUP_PUSH: Final = (
    _NOW
    + """
local exp = tonumber(ARGV[2]) * 1000
local members = {}
for m in string.gmatch(ARGV[4], '[^,]+') do members[#members + 1] = m end
local evicted = {}
local head = expired_head(KEYS[1])
if head then
  local _, kind, field = string.match(head, '^(%d+)|(%a)|([^|]*)|')
  local keep = {}
  for _, m in ipairs(members) do
    local bang = string.find(m, '!', 1, true)
    local loc = bang and string.sub(m, bang + 1) or nil
    if (kind == 'D' and field == m) or (kind == 'F' and loc and string.find(',' .. field .. ',', ',' .. loc .. ',', 1, true)) then
      evicted[#evicted + 1] = m
    else
      keep[#keep + 1] = m
    end
  end
  members = keep
  trim_expired(KEYS[1])
end
local queued = 0
if #members > 0 then
  if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[1]) then
    local field
    if ARGV[3] == 'F' then
      local locals = {}
      for _, m in ipairs(members) do locals[#locals + 1] = string.sub(m, string.find(m, '!', 1, true) + 1) end
      field = table.concat(locals, ',')
    else
      field = members[1]
    end
    redis.call('RPUSH', KEYS[1], fmt(now + exp) .. '|' .. ARGV[3] .. '|' .. field .. '|' .. ARGV[5])
    redis.call('PEXPIRE', KEYS[1], math.ceil(exp) + 1000)
    count(KEYS[2], 'messages_count')
    count(KEYS[3], 'messages_count')
    queued = 1
  else
    count(KEYS[2], 'channel_full_count')
    count(KEYS[3], 'channel_full_count')
  end
end
local result = {queued}
for _, m in ipairs(evicted) do result[#result + 1] = m end
return result
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
