--[[
tor_sets_match: apply a filter read from a file and print the requested fields of every matching event.

Shipped with tor-sets (tor_sets/engines/chisels/). Sysdig takes a filter on its command line, where one argument
may be at most 128 KiB; a full Tor relay list expanded into one condition is longer. This chisel reads the
condition from a file instead and sets it with chisel.set_filter(), which has no such limit.

Usage: sysdig -r CAPTURE -c /path/to/tor_sets_match.lua /path/to/spec

The spec file (written by tor_sets.engines.base):
    line 1: mode, "filter" (replay and print) or "compile" (load the filter, report, exit)
    line 2: field names separated by single spaces
    line 3 to the end: the filter condition (may be empty: every event matches)

Output on stdout, one JSON document per line:
    ["<evt.rawtime.s>", "<evt.rawtime.ns>", "<field 1>", ...]   one per matching event; null for <NA>
    {"compiled": true}                                          compile mode, after the filter loaded
    {"end": <events printed>, "vmhwm_kb": <peak RSS or -1>}     after the last event

Works with both LuaJIT (sysdig 0.29, libs 2022) and Lua 5.3 (sysdig 0.41). Lua 5.3 returns every numeric field
as a float and a double cannot hold a 64-bit nanosecond timestamp, hence the split evt.rawtime.s/.ns and the
integral formatting below.
--]]

description = "tor-sets: print requested fields of events matching a filter read from a file"
short_description = "tor-sets filter runner"
category = "misc"

args = {
	{
		name = "spec",
		description = "path of the spec file: mode line, fields line, then the filter condition",
		argtype = "string",
	},
}

local spec_path = nil
local handles = {}
local printed = 0

local function escape_char(c)
	if c == '"' then
		return '\\"'
	elseif c == "\\" then
		return "\\\\"
	end
	return string.format("\\u%04x", string.byte(c))
end

-- A field value as a JSON string (or null): integral numbers without ".0", control characters escaped.
local function json_value(v)
	if v == nil then
		return "null"
	end
	local t = type(v)
	local s
	if t == "number" then
		if v == math.floor(v) and v > -9.2e18 and v < 9.2e18 then
			s = string.format("%.0f", v)
		else
			s = tostring(v)
		end
	else
		s = tostring(v)
	end
	return '"' .. (string.gsub(s, '[%c"\\]', escape_char)) .. '"'
end

-- Peak resident set size of this process from /proc (absent in a chroot without /proc): kB, or -1.
local function vmhwm_kb()
	local f = io.open("/proc/self/status", "r")
	if f == nil then
		return -1
	end
	local text = f:read("*a")
	f:close()
	local kb = string.match(text or "", "VmHWM:%s*(%d+)")
	if kb == nil then
		return -1
	end
	return tonumber(kb)
end

function on_set_arg(name, val)
	if name == "spec" then
		spec_path = val
	end
	return true
end

function on_init()
	local f, err = io.open(spec_path, "r")
	if f == nil then
		io.stderr:write("tor_sets_match: cannot open spec file: " .. tostring(err) .. "\n")
		os.exit(3)
	end
	local mode = f:read("*l")
	local fields_line = f:read("*l") or ""
	local condition = f:read("*a") or ""
	f:close()

	handles[1] = chisel.request_field("evt.rawtime.s")
	handles[2] = chisel.request_field("evt.rawtime.ns")
	for name in string.gmatch(fields_line, "%S+") do
		handles[#handles + 1] = chisel.request_field(name)
	end
	if string.match(condition, "%S") then
		chisel.set_filter(condition)
	end
	if mode == "compile" then
		io.stdout:write('{"compiled": true}\n')
		io.stdout:flush()
		os.exit(0)
	end
	return true
end

function on_event()
	local parts = {}
	for i = 1, #handles do
		parts[i] = json_value(evt.field(handles[i]))
	end
	io.stdout:write("[" .. table.concat(parts, ", ") .. "]\n")
	printed = printed + 1
	return true
end

function on_capture_end()
	io.stdout:write(string.format('{"end": %d, "vmhwm_kb": %d}\n', printed, vmhwm_kb()))
	io.stdout:flush()
	return true
end
