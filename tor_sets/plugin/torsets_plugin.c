/*
 * torsets_plugin.c: a Falco field-extraction plugin that exposes tor.* fields for syscall events.
 *
 * Shipped with tor-sets (tor_sets/plugin/). Build with `tor-sets plugin build`, or by hand:
 *
 *     gcc -std=c11 -O2 -Wall -Wextra -Werror -fPIC -shared -pthread -fvisibility=hidden \
 *         -I /usr/include/falcosecurity -o libtorsets.so torsets_plugin.c
 *
 * The header is Debian's libfalcosecurity0-dev (plugin/plugin_api.h, plugin API 3.x).
 *
 * What it does. For connect exit (23), accept exit (247) and accept4 exit (249, and 389 as the modern reader
 * converts it) it reads parameter 1, the socket tuple (family, client address, client port, server address,
 * server port), and looks both addresses up in a table of Tor relay addresses written by
 * `tor-sets build --format plugin-table` (tor_sets/plugin/table.py documents the format; this file checks it
 * byte for byte). Lookups are binary searches over sorted arrays: O(log n), no allocation per event.
 *
 * Configuration (init_config, JSON): {"table": "/path/tor.table", "check_interval_s": 5}. plugin_init loads
 * the table itself (a bad table makes init fail). After that a loader thread per plugin state stat()s the
 * file once per check interval (0: about every millisecond, for tests); when its identity (device, inode,
 * size, modification time) changed it reads and checks the new table and hands it over through an atomic
 * pointer, which extraction picks up at its next call. Extraction itself never touches the file system.
 * Only a regular file of at most TABLE_MAX_BYTES is read: anything else (a FIFO, a device, a huge sparse
 * file) is refused before a byte is read, and opening never blocks (O_NONBLOCK). A table that fails any
 * check is not used: the plugin keeps the table it has, records why (plugin_get_last_error and the owner's
 * log, once per file version) and tries again when the file changes once more. Replace the file atomically
 * (write a temporary file, rename it over the old one).
 *
 * Threads: the framework may call extraction concurrently, each thread with its own plugin state. Everything
 * mutable lives in that state; the only globals are constant, except the per-thread buffer that
 * plugin_get_metrics returns. Within a state the loader thread and the framework's thread share only the
 * pending/retired table pointers and the metric counters (C11 atomics) and the loader's last message
 * (under a mutex).
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <plugin/plugin_api.h>

#define EXPORT __attribute__((visibility("default")))

#define TORSETS_NAME "torsets"
#define TORSETS_VERSION "0.2.0"
/*
 * 3.6.0: the first plugin API whose framework resolves plugin_get_metrics and agrees with plugin_types.h on the
 * metric enums (libs 0.18.0, Falco 0.39.0); log_fn in the init input came with 3.3.0.
 * plugin_get_required_event_schema_version (3.12.0) is optional: older frameworks make no schema check at all.
 */
#define TORSETS_REQUIRED_API "3.6.0"
/*
 * The event schema: the lowest 4.x (driver 9.0.0+driver, Falco 0.42.0, the first with the check). The plugin
 * reads parameter 1, the socket tuple, of connect exit (23: res, tuple, fd, addr), accept exit (247: fd, tuple,
 * queuepct, queuelen, queuemax) and accept4 exit (249, and 389 with flags added), all unchanged across 4.x.
 */
#define TORSETS_EVENT_SCHEMA "4.0.0"

/* ------------------------------------------------------------------------------------------------ table */

#define TABLE_MAGIC "TORSETS\0"
#define TABLE_VERSION 1u
#define TABLE_HEADER_SIZE 64u
#define TABLE_V4_RECORD 12u
#define TABLE_V6_RECORD 24u
#define TABLE_RELAY_RECORD 64u
#define TABLE_NO_RELAY UINT32_MAX
/* the largest table read: real ones are well under 1 MiB; a bigger file is refused without reading it */
#define TABLE_MAX_BYTES (64u * 1024u * 1024u)

#define ROLE_ENTRY 1u
#define ROLE_EXIT 2u
#define ROLE_RELAY 4u
#define ROLE_ALL (ROLE_ENTRY | ROLE_EXIT | ROLE_RELAY)

typedef struct {
	char fingerprint[41]; /* 40 upper-case hex digits */
	char nickname[20];    /* 0..19 of [A-Za-z0-9] */
} relay_t;

typedef struct {
	uint32_t addr; /* numeric value: 1.2.3.4 is 0x01020304 */
	uint32_t roles;
	uint32_t relay;
} rec4_t;

typedef struct {
	uint8_t addr[16]; /* network order: memcmp order is numeric order */
	uint32_t roles;
	uint32_t relay;
} rec6_t;

typedef struct {
	uint32_t n4, n6, nrelays;
	int64_t published; /* Unix seconds; 0 when unknown */
	rec4_t *v4;
	rec6_t *v6;
	relay_t *relays;
} table_t;

/* Which file a table came from: a new one has another inode (rename), size or modification time. */
typedef struct {
	bool set;
	dev_t dev;
	ino_t ino;
	off_t size;
	time_t mtime_s;
	long mtime_ns;
} file_id_t;

/* snprintf that may truncate on purpose (messages are capped at PLUGIN_MAX_ERRLEN). */
static void msgf(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void msgf(char *out, size_t len, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, len, fmt, ap);
	va_end(ap);
}

static uint16_t rd16(const uint8_t *p) {
	uint16_t v;
	memcpy(&v, p, sizeof v);
	return v; /* little-endian host assumed, as the capture format and libsinsp do */
}

static uint32_t rd32(const uint8_t *p) {
	uint32_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static uint64_t rd64(const uint8_t *p) {
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static uint32_t be32(const uint8_t *p) {
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* CRC-32 (IEEE 802.3, reflected, as zlib.crc32), table built per call: loads are rare, no shared state. */
static uint32_t crc32_ieee(const uint8_t *data, size_t len) {
	uint32_t table[256];
	for(uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for(int k = 0; k < 8; k++) {
			c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		}
		table[i] = c;
	}
	uint32_t crc = 0xFFFFFFFFu;
	for(size_t i = 0; i < len; i++) {
		crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
	}
	return crc ^ 0xFFFFFFFFu;
}

static void table_free(table_t *t) {
	if(t == NULL) {
		return;
	}
	free(t->v4);
	free(t->v6);
	free(t->relays);
	free(t);
}

static bool is_hex_upper(char c) {
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static bool is_alnum_ascii(char c) {
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* Read all of fd into a new buffer (at most TABLE_MAX_BYTES); errors go to err. */
static uint8_t *read_all(int fd, size_t size, char *err, size_t errlen) {
	if(size > TABLE_MAX_BYTES) {
		msgf(err, errlen, "file of %zu bytes is larger than the %u-byte limit", size, TABLE_MAX_BYTES);
		return NULL;
	}
	uint8_t *buf = malloc(size > 0 ? size : 1);
	if(buf == NULL) {
		msgf(err, errlen, "out of memory reading %zu bytes", size);
		return NULL;
	}
	size_t got = 0;
	while(got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if(n < 0 && errno == EINTR) {
			continue;
		}
		if(n <= 0) {
			msgf(err, errlen, "%s", n < 0 ? strerror(errno) : "file shrank while being read");
			free(buf);
			return NULL;
		}
		got += (size_t)n;
	}
	return buf;
}

/*
 * Decode and check a table image. Layout (little-endian), all of it checked:
 *   0 magic "TORSETS\0" | 8 u16 version | 10 u16 header size (64) | 12 u32 flags (0) | 16 u32 IPv4 count
 *   20 u32 IPv6 count | 24 u32 relay count | 28 u32 CRC-32 of the payload | 32 u64 payload size
 *   40 i64 published (Unix s) | 48 16 zero bytes
 * then IPv4 records (u32 address, u32 roles, u32 relay index), IPv6 records (16-byte address, u32 roles,
 * u32 relay index), relay records (40 hex digits, NUL, nickname NUL-padded to 20 bytes, 3 zero bytes).
 */
static table_t *table_decode(const uint8_t *buf, size_t size, char *err, size_t errlen) {
	if(size < TABLE_HEADER_SIZE) {
		msgf(err, errlen, "file of %zu bytes is shorter than the header", size);
		return NULL;
	}
	if(memcmp(buf, TABLE_MAGIC, 8) != 0) {
		msgf(err, errlen, "not a tor-sets table (bad magic)");
		return NULL;
	}
	uint16_t version = rd16(buf + 8);
	uint16_t header_size = rd16(buf + 10);
	if(version != TABLE_VERSION || header_size != TABLE_HEADER_SIZE || rd32(buf + 12) != 0) {
		msgf(err, errlen, "unsupported table version %u (header %u bytes); this plugin reads version %u",
		         (unsigned)version, (unsigned)header_size, TABLE_VERSION);
		return NULL;
	}
	for(size_t i = 48; i < TABLE_HEADER_SIZE; i++) {
		if(buf[i] != 0) {
			msgf(err, errlen, "reserved header bytes are not zero");
			return NULL;
		}
	}
	uint32_t n4 = rd32(buf + 16), n6 = rd32(buf + 20), nrelays = rd32(buf + 24), crc = rd32(buf + 28);
	uint64_t payload = rd64(buf + 32);
	int64_t published;
	memcpy(&published, buf + 40, sizeof published);
	uint64_t expected = (uint64_t)n4 * TABLE_V4_RECORD + (uint64_t)n6 * TABLE_V6_RECORD +
	                    (uint64_t)nrelays * TABLE_RELAY_RECORD;
	if(payload != expected || payload != size - TABLE_HEADER_SIZE) {
		msgf(err, errlen, "size mismatch: file has %zu payload bytes, header says %llu, counts need %llu",
		         size - TABLE_HEADER_SIZE, (unsigned long long)payload, (unsigned long long)expected);
		return NULL;
	}
	const uint8_t *p = buf + TABLE_HEADER_SIZE;
	uint32_t actual = crc32_ieee(p, (size_t)payload);
	if(actual != crc) {
		msgf(err, errlen, "checksum mismatch (header %08x, payload %08x): truncated or corrupt", crc, actual);
		return NULL;
	}
	if(published < 0) {
		msgf(err, errlen, "negative publication time");
		return NULL;
	}

	table_t *t = calloc(1, sizeof *t);
	if(t == NULL) {
		msgf(err, errlen, "out of memory");
		return NULL;
	}
	t->n4 = n4;
	t->n6 = n6;
	t->nrelays = nrelays;
	t->published = published;
	t->v4 = calloc(n4 > 0 ? n4 : 1, sizeof *t->v4);
	t->v6 = calloc(n6 > 0 ? n6 : 1, sizeof *t->v6);
	t->relays = calloc(nrelays > 0 ? nrelays : 1, sizeof *t->relays);
	if(t->v4 == NULL || t->v6 == NULL || t->relays == NULL) {
		msgf(err, errlen, "out of memory");
		table_free(t);
		return NULL;
	}

	for(uint32_t i = 0; i < n4; i++, p += TABLE_V4_RECORD) {
		rec4_t *r = &t->v4[i];
		r->addr = rd32(p);
		r->roles = rd32(p + 4);
		r->relay = rd32(p + 8);
		if(i > 0 && r->addr <= t->v4[i - 1].addr) {
			msgf(err, errlen, "IPv4 record %u is out of order or repeated", i);
			goto bad;
		}
		if(r->roles == 0 || (r->roles & ~ROLE_ALL) != 0 || (r->relay != TABLE_NO_RELAY && r->relay >= nrelays)) {
			msgf(err, errlen, "IPv4 record %u has bad roles or relay index", i);
			goto bad;
		}
	}
	for(uint32_t i = 0; i < n6; i++, p += TABLE_V6_RECORD) {
		rec6_t *r = &t->v6[i];
		memcpy(r->addr, p, 16);
		r->roles = rd32(p + 16);
		r->relay = rd32(p + 20);
		if(i > 0 && memcmp(r->addr, t->v6[i - 1].addr, 16) <= 0) {
			msgf(err, errlen, "IPv6 record %u is out of order or repeated", i);
			goto bad;
		}
		if(r->roles == 0 || (r->roles & ~ROLE_ALL) != 0 || (r->relay != TABLE_NO_RELAY && r->relay >= nrelays)) {
			msgf(err, errlen, "IPv6 record %u has bad roles or relay index", i);
			goto bad;
		}
	}
	for(uint32_t i = 0; i < nrelays; i++, p += TABLE_RELAY_RECORD) {
		relay_t *r = &t->relays[i];
		bool ok = p[40] == 0 && p[61] == 0 && p[62] == 0 && p[63] == 0;
		for(int k = 0; ok && k < 40; k++) {
			ok = is_hex_upper((char)p[k]);
		}
		/* nickname: [A-Za-z0-9]{0,19}, then NUL bytes to the end of its 20-byte slot */
		int k = 0;
		while(ok && k < 19 && p[41 + k] != 0) {
			ok = is_alnum_ascii((char)p[41 + k]);
			k++;
		}
		for(int z = k; ok && z < 20; z++) {
			ok = p[41 + z] == 0;
		}
		if(!ok) {
			msgf(err, errlen, "relay record %u is not a fingerprint and nickname", i);
			goto bad;
		}
		memcpy(r->fingerprint, p, 40);
		r->fingerprint[40] = '\0';
		memcpy(r->nickname, p + 41, 20); /* NUL-terminated: at most 19 characters, then zeros */
	}
	return t;

bad:
	table_free(t);
	return NULL;
}

static void file_id_from_stat(file_id_t *id, const struct stat *st) {
	id->set = true;
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = st->st_size;
	id->mtime_s = st->st_mtim.tv_sec;
	id->mtime_ns = st->st_mtim.tv_nsec;
}

static bool same_file(const file_id_t *a, const struct stat *st) {
	return a->set && a->dev == st->st_dev && a->ino == st->st_ino && a->size == st->st_size &&
	       a->mtime_s == st->st_mtim.tv_sec && a->mtime_ns == st->st_mtim.tv_nsec;
}

/*
 * Identify (into id), check and decode the table at path. Only a regular file of at most TABLE_MAX_BYTES is
 * opened and read; the type and size are checked with stat() before opening and again on the open file, and
 * the file is opened with O_NONBLOCK, so that a FIFO or device put at the path can never block the caller.
 */
static table_t *table_load(const char *path, file_id_t *id, char *err, size_t errlen) {
	struct stat st;
	if(stat(path, &st) != 0) {
		msgf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	file_id_from_stat(id, &st);
	if(!S_ISREG(st.st_mode)) {
		msgf(err, errlen, "%s is not a regular file", path);
		return NULL;
	}
	if(st.st_size < 0 || (uint64_t)st.st_size > TABLE_MAX_BYTES) {
		msgf(err, errlen, "%s has %lld bytes, more than the %u-byte limit of a table", path, (long long)st.st_size,
		     TABLE_MAX_BYTES);
		return NULL;
	}
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if(fd < 0) {
		msgf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if(fstat(fd, &st) != 0) {
		msgf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	file_id_from_stat(id, &st); /* the file actually opened, should the path have been swapped meanwhile */
	if(!S_ISREG(st.st_mode) || st.st_size < 0 || (uint64_t)st.st_size > TABLE_MAX_BYTES) {
		msgf(err, errlen, "%s is not a regular file of at most %u bytes", path, TABLE_MAX_BYTES);
		close(fd);
		return NULL;
	}
	char why[512];
	uint8_t *buf = read_all(fd, (size_t)st.st_size, why, sizeof why);
	close(fd);
	if(buf == NULL) {
		msgf(err, errlen, "cannot read %s: %s", path, why);
		return NULL;
	}
	table_t *t = table_decode(buf, (size_t)st.st_size, why, sizeof why);
	free(buf);
	if(t == NULL) {
		msgf(err, errlen, "bad table %s: %s", path, why);
	}
	return t;
}

/* ------------------------------------------------------------------------------------------------ lookup */

typedef struct {
	uint32_t roles;
	const relay_t *relay;
} hit_t;

static hit_t lookup_v4(const table_t *t, uint32_t addr) {
	hit_t hit = {0, NULL};
	size_t lo = 0, hi = t->n4;
	while(lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const rec4_t *r = &t->v4[mid];
		if(r->addr == addr) {
			hit.roles = r->roles;
			hit.relay = r->relay == TABLE_NO_RELAY ? NULL : &t->relays[r->relay];
			break;
		}
		if(r->addr < addr) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return hit;
}

static hit_t lookup_v6(const table_t *t, const uint8_t addr[16]) {
	static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
	if(memcmp(addr, v4_mapped, sizeof v4_mapped) == 0) {
		return lookup_v4(t, be32(addr + 12)); /* ::ffff:a.b.c.d is an IPv4 peer of a dual-stack socket */
	}
	hit_t hit = {0, NULL};
	size_t lo = 0, hi = t->n6;
	while(lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const rec6_t *r = &t->v6[mid];
		int c = memcmp(r->addr, addr, 16);
		if(c == 0) {
			hit.roles = r->roles;
			hit.relay = r->relay == TABLE_NO_RELAY ? NULL : &t->relays[r->relay];
			break;
		}
		if(c < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return hit;
}

/* ------------------------------------------------------------------------------------------------ state */

enum {
	F_SERVER_ROLE,
	F_CLIENT_ROLE,
	F_REMOTE_ROLE,
	F_SERVER_IS_ENTRY,
	F_SERVER_IS_EXIT,
	F_SERVER_IS_RELAY,
	F_CLIENT_IS_ENTRY,
	F_CLIENT_IS_EXIT,
	F_CLIENT_IS_RELAY,
	F_IS_RELAY,
	F_FINGERPRINT,
	F_NICKNAME,
	F_COUNT
};

static const char FIELDS_JSON[] =
        "["
        "{\"type\":\"string\",\"name\":\"tor.server_role\",\"desc\":\"Tor role of the server end of the socket "
        "(fd.sip): entry, exit, 'entry,exit', relay (neither entry nor exit) or none.\"},"
        "{\"type\":\"string\",\"name\":\"tor.client_role\",\"desc\":\"Tor role of the client end of the socket "
        "(fd.cip), with the values of tor.server_role.\"},"
        "{\"type\":\"string\",\"name\":\"tor.remote_role\",\"desc\":\"Tor role of the remote end: the server "
        "for connect, the client for accept and accept4.\"},"
        "{\"type\":\"bool\",\"name\":\"tor.server_is_entry\",\"desc\":\"The server end is a Tor entry relay "
        "(Guard flag, or a directory authority).\"},"
        "{\"type\":\"bool\",\"name\":\"tor.server_is_exit\",\"desc\":\"The server end is a Tor exit relay.\"},"
        "{\"type\":\"bool\",\"name\":\"tor.server_is_relay\",\"desc\":\"The server end is any Tor relay.\"},"
        "{\"type\":\"bool\",\"name\":\"tor.client_is_entry\",\"desc\":\"The client end is a Tor entry relay.\"},"
        "{\"type\":\"bool\",\"name\":\"tor.client_is_exit\",\"desc\":\"The client end is a Tor exit relay "
        "(an OR or exit address of a relay with the Exit flag).\"},"
        "{\"type\":\"bool\",\"name\":\"tor.client_is_relay\",\"desc\":\"The client end is any Tor relay.\"},"
        "{\"type\":\"bool\",\"name\":\"tor.is_relay\",\"desc\":\"Either end of the socket is a Tor relay.\"},"
        "{\"type\":\"string\",\"name\":\"tor.fingerprint\",\"desc\":\"Fingerprint of the relay at the remote "
        "end (no value when the remote end is no known relay).\"},"
        "{\"type\":\"string\",\"name\":\"tor.nickname\",\"desc\":\"Nickname of the relay at the remote end "
        "(relay-chosen text, [A-Za-z0-9]{1,19}).\"}"
        "]";

static const char INIT_SCHEMA[] =
        "{\"$schema\":\"http://json-schema.org/draft-04/schema#\",\"type\":\"object\","
        "\"properties\":{"
        "\"table\":{\"type\":\"string\",\"description\":\"Path of the table written by `tor-sets plugin table` "
        "(or build --format plugin-table)\"},"
        "\"check_interval_s\":{\"type\":\"number\",\"minimum\":0,\"description\":\"Seconds between checks for "
        "a replaced table file (default 5; 0 checks about every millisecond, for tests)\"}"
        "},\"required\":[\"table\"],\"additionalProperties\":false}";

static const char *const ROLE_NAMES[8] = {
        "none",  /* 0 */
        "entry", /* entry */
        "exit",  /* exit */
        "entry,exit",
        "relay", /* relay only */
        "entry",
        "exit",
        "entry,exit",
};

typedef struct {
	bool valid;   /* the event is one of ours with a readable parameter list */
	bool inet;    /* ... and an IPv4/IPv6 socket tuple */
	bool connect; /* the remote end is the server */
	hit_t client, server;
} view_t;

typedef struct {
	/* set by plugin_init, read-only afterwards */
	char path[4096];
	uint64_t interval_ns;
	ss_plugin_owner_t *owner;
	ss_plugin_log_fn_t log_fn;
	uint16_t event_types[4]; /* handed to the framework, which may keep the pointer */

	/* the framework's thread (init, extraction, last error) */
	table_t *table; /* the table extraction uses */
	char last_error[PLUGIN_MAX_ERRLEN];
	uint64_t seen_message; /* the loader message last copied into last_error */
	uint32_t cap;          /* extraction scratch: results live here until the next call */
	ss_plugin_bool *bools;
	const char **strs;
	bool cached;
	uint64_t cached_evtnum;
	view_t view;

	/* handed between the loader thread and extraction */
	_Atomic(table_t *) pending; /* loaded and checked by the loader, not yet taken by extraction */
	_Atomic(table_t *) retired; /* no longer used by extraction, for the loader to free */
	/* metrics: written by init and the loader, read by plugin_get_metrics on any thread */
	atomic_uint_least64_t loads;     /* tables loaded and accepted: 1 after init */
	atomic_uint_least64_t rejects;   /* table file versions refused */
	atomic_int_least64_t published;  /* relays_published of the newest accepted table (0: unknown) */

	/* the loader thread; lock guards stop and the message fields */
	pthread_t loader;
	bool loader_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool sync_ready; /* lock and wake were initialised */
	bool stop;
	char message[PLUGIN_MAX_ERRLEN]; /* the loader's last complaint, for plugin_get_last_error */
	uint64_t message_count;
	file_id_t loaded; /* the file version in pending or in use (the loader's after init) */
	file_id_t failed; /* the file version whose load failed last, not retried until it changes */
	bool missing;     /* the table file was missing at the last check (reported once) */
} state_t;

static void plugin_log(state_t *s, ss_plugin_log_severity sev, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void plugin_log(state_t *s, ss_plugin_log_severity sev, const char *fmt, ...) {
	if(s->log_fn == NULL) {
		return;
	}
	char msg[PLUGIN_MAX_ERRLEN];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	s->log_fn(s->owner, NULL, msg, sev);
}

static void log_loaded(state_t *s, const table_t *t, const char *verb) {
	plugin_log(s, SS_PLUGIN_LOG_SEV_INFO, "%s %s: %u IPv4 and %u IPv6 addresses, %u relays, published %lld", verb,
	           s->path, t->n4, t->n6, t->nrelays, (long long)t->published);
}

/* The loader's complaint: logged once, kept for plugin_get_last_error (which copies it on the framework's thread). */
static void loader_complain(state_t *s, const char *msg) {
	pthread_mutex_lock(&s->lock);
	msgf(s->message, sizeof s->message, "%s", msg);
	s->message_count++;
	pthread_mutex_unlock(&s->lock);
	plugin_log(s, SS_PLUGIN_LOG_SEV_ERROR, "%s", msg);
}

/* One check by the loader: load the file at path when it is another file than the one loaded (and the last bad one). */
static void loader_check(state_t *s) {
	char msg[PLUGIN_MAX_ERRLEN];
	struct stat st;
	if(stat(s->path, &st) != 0) {
		if(!s->missing) {
			s->missing = true; /* reported once, until the file is back */
			msgf(msg, sizeof msg, "table %s is gone (%s); keeping the loaded table", s->path, strerror(errno));
			loader_complain(s, msg);
		}
		return;
	}
	s->missing = false;
	if(same_file(&s->loaded, &st) || same_file(&s->failed, &st)) {
		return;
	}
	char err[PLUGIN_MAX_ERRLEN - 64];
	file_id_t id = {0};
	table_t *t = table_load(s->path, &id, err, sizeof err);
	if(t == NULL) {
		if(!id.set) {
			file_id_from_stat(&id, &st); /* could not even open it: wait for the next change all the same */
		}
		s->failed = id;
		atomic_fetch_add(&s->rejects, 1);
		msgf(msg, sizeof msg, "%s; keeping the loaded table", err);
		loader_complain(s, msg);
		return;
	}
	s->loaded = id;
	memset(&s->failed, 0, sizeof s->failed);
	atomic_store(&s->published, (int_least64_t)t->published);
	atomic_fetch_add(&s->loads, 1);
	log_loaded(s, t, "reloaded");
	/* a table extraction has not taken yet is replaced: it never saw it, so it is freed here */
	table_free(atomic_exchange(&s->pending, t));
}

static struct timespec deadline_after(uint64_t ns) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t total = (uint64_t)ts.tv_nsec + ns % 1000000000u;
	ts.tv_sec += (time_t)(ns / 1000000000u + total / 1000000000u);
	ts.tv_nsec = (long)(total % 1000000000u);
	return ts;
}

/* The loader thread: every check interval, free what extraction retired and check the file. */
static void *loader_main(void *arg) {
	state_t *s = arg;
	uint64_t period = s->interval_ns > 1000000u ? s->interval_ns : 1000000u;
	pthread_mutex_lock(&s->lock);
	while(!s->stop) {
		struct timespec deadline = deadline_after(period);
		while(!s->stop && pthread_cond_timedwait(&s->wake, &s->lock, &deadline) == 0) {
		}
		if(s->stop) {
			break;
		}
		pthread_mutex_unlock(&s->lock);
		table_free(atomic_exchange(&s->retired, NULL));
		loader_check(s);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static bool loader_start(state_t *s, char *err, size_t errlen) {
	pthread_condattr_t attr;
	if(pthread_condattr_init(&attr) != 0 || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
	   pthread_cond_init(&s->wake, &attr) != 0) {
		msgf(err, errlen, "cannot set up the table loader");
		return false;
	}
	pthread_condattr_destroy(&attr);
	if(pthread_mutex_init(&s->lock, NULL) != 0) {
		pthread_cond_destroy(&s->wake);
		msgf(err, errlen, "cannot set up the table loader");
		return false;
	}
	s->sync_ready = true;
	int rc = pthread_create(&s->loader, NULL, loader_main, s);
	if(rc != 0) {
		msgf(err, errlen, "cannot start the table loader thread: %s", strerror(rc));
		return false;
	}
	s->loader_started = true;
	return true;
}

static void loader_stop(state_t *s) {
	if(s->loader_started) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->loader, NULL);
		s->loader_started = false;
	}
	if(s->sync_ready) {
		pthread_cond_destroy(&s->wake);
		pthread_mutex_destroy(&s->lock);
		s->sync_ready = false;
	}
}

/* On the framework's thread, at the start of an extraction: take a table the loader has prepared. */
static void take_pending(state_t *s) {
	if(atomic_load_explicit(&s->pending, memory_order_relaxed) == NULL ||
	   atomic_load_explicit(&s->retired, memory_order_relaxed) != NULL) {
		return; /* nothing new, or the loader has not yet freed the table retired last time */
	}
	table_t *fresh = atomic_exchange_explicit(&s->pending, NULL, memory_order_acquire);
	if(fresh == NULL) {
		return;
	}
	/* the old table's strings were results of the previous call, which the framework is done with */
	atomic_store_explicit(&s->retired, s->table, memory_order_release);
	s->table = fresh;
	s->cached = false; /* the cached view points into the old table */
}

/* ------------------------------------------------------------------------------------------------ config */

typedef struct {
	const char *p;
	char *err;
	size_t errlen;
} json_t;

static void json_ws(json_t *j) {
	while(*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r') {
		j->p++;
	}
}

static int hexval(char c) {
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	if(c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static bool json_hex4(json_t *j, uint32_t *out) {
	uint32_t v = 0;
	for(int i = 0; i < 4; i++) {
		int h = hexval(j->p[i]);
		if(h < 0) {
			msgf(j->err, j->errlen, "bad \\u escape in init_config");
			return false;
		}
		v = (v << 4) | (uint32_t)h;
	}
	j->p += 4;
	*out = v;
	return true;
}

/* Parse a JSON string into out (UTF-8, NUL-terminated, at most outlen - 1 bytes). */
static bool json_string(json_t *j, char *out, size_t outlen) {
	if(*j->p != '"') {
		msgf(j->err, j->errlen, "init_config: expected a string");
		return false;
	}
	j->p++;
	size_t n = 0;
	for(;;) {
		unsigned char c = (unsigned char)*j->p;
		if(c == '\0' || c < 0x20) {
			msgf(j->err, j->errlen, "init_config: unterminated string or control character");
			return false;
		}
		j->p++;
		if(c == '"') {
			break;
		}
		char buf[4];
		size_t len = 1;
		buf[0] = (char)c;
		if(c == '\\') {
			char e = *j->p++;
			switch(e) {
			case '"': buf[0] = '"'; break;
			case '\\': buf[0] = '\\'; break;
			case '/': buf[0] = '/'; break;
			case 'b': buf[0] = '\b'; break;
			case 'f': buf[0] = '\f'; break;
			case 'n': buf[0] = '\n'; break;
			case 'r': buf[0] = '\r'; break;
			case 't': buf[0] = '\t'; break;
			case 'u': {
				uint32_t cp;
				if(!json_hex4(j, &cp)) {
					return false;
				}
				if(cp >= 0xD800 && cp <= 0xDBFF) {
					uint32_t lo;
					if(j->p[0] != '\\' || j->p[1] != 'u') {
						msgf(j->err, j->errlen, "init_config: lone surrogate in string");
						return false;
					}
					j->p += 2;
					if(!json_hex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
						msgf(j->err, j->errlen, "init_config: bad surrogate pair in string");
						return false;
					}
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				} else if(cp >= 0xDC00 && cp <= 0xDFFF) {
					msgf(j->err, j->errlen, "init_config: lone surrogate in string");
					return false;
				}
				if(cp == 0) {
					msgf(j->err, j->errlen, "init_config: NUL character in string");
					return false;
				}
				if(cp < 0x80) {
					buf[0] = (char)cp;
				} else if(cp < 0x800) {
					buf[0] = (char)(0xC0 | (cp >> 6));
					buf[1] = (char)(0x80 | (cp & 0x3F));
					len = 2;
				} else if(cp < 0x10000) {
					buf[0] = (char)(0xE0 | (cp >> 12));
					buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
					buf[2] = (char)(0x80 | (cp & 0x3F));
					len = 3;
				} else {
					buf[0] = (char)(0xF0 | (cp >> 18));
					buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
					buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
					buf[3] = (char)(0x80 | (cp & 0x3F));
					len = 4;
				}
				break;
			}
			default:
				msgf(j->err, j->errlen, "init_config: bad escape in string");
				return false;
			}
		}
		if(n + len >= outlen) {
			msgf(j->err, j->errlen, "init_config: string longer than %zu bytes", outlen - 1);
			return false;
		}
		memcpy(out + n, buf, len);
		n += len;
	}
	out[n] = '\0';
	return true;
}

static bool json_number(json_t *j, double *out) {
	const char *start = j->p;
	if(*j->p == '-') j->p++;
	if(*j->p < '0' || *j->p > '9') {
		msgf(j->err, j->errlen, "init_config: expected a number");
		return false;
	}
	while((*j->p >= '0' && *j->p <= '9') || *j->p == '.' || *j->p == 'e' || *j->p == 'E' || *j->p == '+' ||
	      *j->p == '-') {
		j->p++;
	}
	char buf[64];
	size_t len = (size_t)(j->p - start);
	if(len >= sizeof buf) {
		msgf(j->err, j->errlen, "init_config: number too long");
		return false;
	}
	memcpy(buf, start, len);
	buf[len] = '\0';
	char *end;
	errno = 0;
	*out = strtod(buf, &end);
	if(*end != '\0' || errno != 0) {
		msgf(j->err, j->errlen, "init_config: bad number %s", buf);
		return false;
	}
	return true;
}

/* {"table": "...", "check_interval_s": N}; anything else is an error. */
static bool parse_config(const char *text, state_t *s, char *err, size_t errlen) {
	json_t j = {text != NULL ? text : "", err, errlen};
	bool have_table = false;
	double interval = 5.0;
	json_ws(&j);
	if(*j.p != '{') {
		msgf(err, errlen, "init_config must be a JSON object such as {\"table\": \"/etc/falco/tor.table\"}");
		return false;
	}
	j.p++;
	json_ws(&j);
	if(*j.p == '}') {
		j.p++;
	} else {
		for(;;) {
			char key[64];
			json_ws(&j);
			if(!json_string(&j, key, sizeof key)) {
				return false;
			}
			json_ws(&j);
			if(*j.p != ':') {
				msgf(err, errlen, "init_config: expected ':' after \"%s\"", key);
				return false;
			}
			j.p++;
			json_ws(&j);
			if(strcmp(key, "table") == 0) {
				if(!json_string(&j, s->path, sizeof s->path)) {
					return false;
				}
				have_table = true;
			} else if(strcmp(key, "check_interval_s") == 0) {
				if(!json_number(&j, &interval)) {
					return false;
				}
			} else {
				msgf(err, errlen, "init_config: unknown key \"%s\" (known: table, check_interval_s)", key);
				return false;
			}
			json_ws(&j);
			if(*j.p == ',') {
				j.p++;
				continue;
			}
			if(*j.p == '}') {
				j.p++;
				break;
			}
			msgf(err, errlen, "init_config: expected ',' or '}'");
			return false;
		}
	}
	json_ws(&j);
	if(*j.p != '\0') {
		msgf(err, errlen, "init_config: trailing characters after the object");
		return false;
	}
	if(!have_table || s->path[0] == '\0') {
		msgf(err, errlen, "init_config: \"table\" (path of the tor-sets table) is required");
		return false;
	}
	if(!(interval >= 0.0 && interval <= 86400.0 * 365)) {
		msgf(err, errlen, "init_config: check_interval_s must be between 0 and one year");
		return false;
	}
	s->interval_ns = (uint64_t)(interval * 1e9);
	return true;
}

/* ------------------------------------------------------------------------------------------------ API */

/* The exported symbols: the common part of the plugin API and the field-extraction capability. */
EXPORT const char *plugin_get_required_api_version(void);
EXPORT const char *plugin_get_version(void);
EXPORT const char *plugin_get_name(void);
EXPORT const char *plugin_get_description(void);
EXPORT const char *plugin_get_contact(void);
EXPORT const char *plugin_get_init_schema(ss_plugin_schema_type *schema_type);
EXPORT const char *plugin_get_fields(void);
EXPORT const char *plugin_get_extract_event_sources(void);
EXPORT uint16_t *plugin_get_extract_event_types(uint32_t *numtypes, ss_plugin_t *s);
EXPORT const char *plugin_get_last_error(ss_plugin_t *s);
EXPORT void plugin_destroy(ss_plugin_t *s);
EXPORT ss_plugin_t *plugin_init(const ss_plugin_init_input *in, ss_plugin_rc *rc);
EXPORT ss_plugin_rc plugin_extract_fields(ss_plugin_t *ps, const ss_plugin_event_input *ev,
                                          const ss_plugin_field_extract_input *in);
EXPORT ss_plugin_metric *plugin_get_metrics(ss_plugin_t *s, uint32_t *num_metrics);
EXPORT const char *plugin_get_required_event_schema_version(ss_plugin_t *s);

EXPORT const char *plugin_get_required_api_version(void) {
	return TORSETS_REQUIRED_API;
}

EXPORT const char *plugin_get_version(void) {
	return TORSETS_VERSION;
}

EXPORT const char *plugin_get_name(void) {
	return TORSETS_NAME;
}

EXPORT const char *plugin_get_description(void) {
	return "Tor relay roles, fingerprints and nicknames of socket ends (tor.* fields), from a tor-sets table "
	       "that is reloaded when its file is replaced";
}

EXPORT const char *plugin_get_contact(void) {
	return "tor-sets (https://pypi.org/project/tor-sets/)";
}

EXPORT const char *plugin_get_init_schema(ss_plugin_schema_type *schema_type) {
	*schema_type = SS_PLUGIN_SCHEMA_JSON;
	return INIT_SCHEMA;
}

EXPORT const char *plugin_get_fields(void) {
	return FIELDS_JSON;
}

EXPORT const char *plugin_get_extract_event_sources(void) {
	return "[\"syscall\"]";
}

EXPORT uint16_t *plugin_get_extract_event_types(uint32_t *numtypes, ss_plugin_t *s) {
	state_t *st = s;
	if(st == NULL) {
		*numtypes = 0; /* no state: every event reaches extraction, which ignores the ones it does not know */
		return NULL;
	}
	*numtypes = (uint32_t)(sizeof st->event_types / sizeof st->event_types[0]);
	return st->event_types;
}

EXPORT const char *plugin_get_last_error(ss_plugin_t *s) {
	state_t *st = s;
	if(st == NULL) {
		return "torsets: no plugin state";
	}
	if(st->sync_ready) {
		pthread_mutex_lock(&st->lock);
		if(st->message_count != st->seen_message) {
			st->seen_message = st->message_count; /* the loader's newest complaint */
			msgf(st->last_error, sizeof st->last_error, "%s", st->message);
		}
		pthread_mutex_unlock(&st->lock);
	}
	return st->last_error;
}

EXPORT const char *plugin_get_required_event_schema_version(ss_plugin_t *s) {
	(void)s;
	return TORSETS_EVENT_SCHEMA;
}

/* The metrics array handed out: one per calling thread (stats writer, web server), valid until its next call. */
static _Thread_local ss_plugin_metric metrics_out[3];

static void set_metric(ss_plugin_metric *m, const char *name, ss_plugin_metric_type type, uint64_t value) {
	m->name = name;
	m->type = type;
	m->value.u64 = value;
	m->value_type = SS_PLUGIN_METRIC_VALUE_TYPE_U64;
}

EXPORT ss_plugin_metric *plugin_get_metrics(ss_plugin_t *s, uint32_t *num_metrics) {
	state_t *st = s;
	*num_metrics = 0;
	if(st == NULL) {
		return NULL;
	}
	set_metric(&metrics_out[0], "table_loads", SS_PLUGIN_METRIC_TYPE_MONOTONIC, atomic_load(&st->loads));
	set_metric(&metrics_out[1], "table_rejects", SS_PLUGIN_METRIC_TYPE_MONOTONIC, atomic_load(&st->rejects));
	*num_metrics = 2;
	int64_t published = atomic_load(&st->published);
	if(published > 0) { /* no age for a table without publication time */
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		int64_t age = (int64_t)now.tv_sec - published;
		set_metric(&metrics_out[2], "table_age_s", SS_PLUGIN_METRIC_TYPE_NON_MONOTONIC, age > 0 ? (uint64_t)age : 0);
		*num_metrics = 3;
	}
	return metrics_out;
}

EXPORT void plugin_destroy(ss_plugin_t *s) {
	state_t *st = s;
	if(st == NULL) {
		return;
	}
	loader_stop(st);
	table_free(st->table);
	table_free(atomic_exchange(&st->pending, NULL));
	table_free(atomic_exchange(&st->retired, NULL));
	free(st->bools);
	free(st->strs);
	free(st);
}

EXPORT ss_plugin_t *plugin_init(const ss_plugin_init_input *in, ss_plugin_rc *rc) {
	*rc = SS_PLUGIN_FAILURE;
	state_t *s = calloc(1, sizeof *s);
	if(s == NULL) {
		return NULL;
	}
	atomic_init(&s->pending, NULL);
	atomic_init(&s->retired, NULL);
	atomic_init(&s->loads, 0);
	atomic_init(&s->rejects, 0);
	atomic_init(&s->published, 0);
	/* connect exit, accept exit, accept4 exit (legacy number, and the number the modern reader converts it to) */
	static const uint16_t types[] = {23, 247, 249, 389};
	memcpy(s->event_types, types, sizeof s->event_types);
	if(in != NULL) {
		s->owner = in->owner;
		s->log_fn = in->log_fn;
	}
	char err[PLUGIN_MAX_ERRLEN];
	if(!parse_config(in != NULL ? in->config : NULL, s, err, sizeof err)) {
		msgf(s->last_error, sizeof s->last_error, "%s", err);
		return s;
	}
	s->table = table_load(s->path, &s->loaded, err, sizeof err);
	if(s->table == NULL) {
		msgf(s->last_error, sizeof s->last_error, "%s", err);
		return s;
	}
	atomic_store(&s->loads, 1);
	atomic_store(&s->published, (int_least64_t)s->table->published);
	log_loaded(s, s->table, "loaded");
	if(!loader_start(s, err, sizeof err)) {
		msgf(s->last_error, sizeof s->last_error, "%s", err);
		return s;
	}
	*rc = SS_PLUGIN_SUCCESS;
	return s;
}

/*
 * Find the socket tuple: the event header (u64 ts, u64 tid, u32 len, u16 type, u32 nparams), one u16 length
 * per parameter, then the parameters; the tuple is parameter 1 of all four event types.
 * IPv4 tuple: u8 family 2, u32 client, u16 client port, u32 server, u16 server port (13 bytes);
 * IPv6 tuple: u8 family 10, 16-byte client, u16 port, 16-byte server, u16 port (37 bytes).
 */
static void decode_event(const state_t *s, const ss_plugin_event *evt, view_t *v) {
	memset(v, 0, sizeof *v);
	const uint8_t *e = (const uint8_t *)evt;
	const uint32_t header = 26;
	uint32_t len = rd32(e + 16);
	uint16_t type = rd16(e + 20);
	uint32_t nparams = rd32(e + 22);
	if(type != 23 && type != 247 && type != 249 && type != 389) {
		return;
	}
	if(len < header || nparams < 2 || nparams > (len - header) / 2) {
		return;
	}
	uint32_t values = header + 2 * nparams;
	uint32_t len0 = rd16(e + header), len1 = rd16(e + header + 2);
	if((uint64_t)values + len0 + len1 > len) {
		return;
	}
	v->valid = true;
	v->connect = type == 23;
	const uint8_t *t = e + values + len0;
	if(len1 == 13 && t[0] == 2) {
		v->inet = true;
		v->client = lookup_v4(s->table, be32(t + 1));
		v->server = lookup_v4(s->table, be32(t + 7));
	} else if(len1 == 37 && t[0] == 10) {
		v->inet = true;
		v->client = lookup_v6(s->table, t + 1);
		v->server = lookup_v6(s->table, t + 19);
	}
}

static bool grow(state_t *s, uint32_t n) {
	if(n <= s->cap) {
		return true;
	}
	ss_plugin_bool *b = realloc(s->bools, n * sizeof *b);
	if(b == NULL) return false;
	s->bools = b;
	const char **p = realloc(s->strs, n * sizeof *p);
	if(p == NULL) return false;
	s->strs = p;
	s->cap = n;
	return true;
}

static void set_bool(state_t *s, ss_plugin_extract_field *f, uint32_t i, bool value) {
	s->bools[i] = value ? 1 : 0;
	f->res.boolean = &s->bools[i];
	f->res_len = 1;
}

static void set_str(state_t *s, ss_plugin_extract_field *f, uint32_t i, const char *value) {
	s->strs[i] = value;
	f->res.str = &s->strs[i];
	f->res_len = 1;
}


EXPORT ss_plugin_rc plugin_extract_fields(ss_plugin_t *ps, const ss_plugin_event_input *ev,
                                          const ss_plugin_field_extract_input *in) {
	state_t *s = ps;
	if(s == NULL || s->table == NULL) {
		return SS_PLUGIN_FAILURE; /* init failed: the framework should not extract, but never dereference NULL */
	}
	take_pending(s);
	if(!grow(s, in->num_fields)) {
		msgf(s->last_error, sizeof s->last_error, "out of memory for %u fields", in->num_fields);
		return SS_PLUGIN_FAILURE;
	}
	if(!s->cached || s->cached_evtnum != ev->evtnum) {
		decode_event(s, ev->evt, &s->view);
		s->cached = true;
		s->cached_evtnum = ev->evtnum;
	}
	const view_t *v = &s->view;
	const hit_t *remote = v->connect ? &v->server : &v->client;
	for(uint32_t i = 0; i < in->num_fields; i++) {
		ss_plugin_extract_field *f = &in->fields[i];
		f->res_len = 0;
		if(!v->valid) {
			continue; /* not an event of ours: no value */
		}
		switch(f->field_id) {
		case F_SERVER_ROLE: set_str(s, f, i, ROLE_NAMES[v->server.roles & ROLE_ALL]); break;
		case F_CLIENT_ROLE: set_str(s, f, i, ROLE_NAMES[v->client.roles & ROLE_ALL]); break;
		case F_REMOTE_ROLE: set_str(s, f, i, ROLE_NAMES[remote->roles & ROLE_ALL]); break;
		case F_SERVER_IS_ENTRY: set_bool(s, f, i, (v->server.roles & ROLE_ENTRY) != 0); break;
		case F_SERVER_IS_EXIT: set_bool(s, f, i, (v->server.roles & ROLE_EXIT) != 0); break;
		case F_SERVER_IS_RELAY: set_bool(s, f, i, v->server.roles != 0); break;
		case F_CLIENT_IS_ENTRY: set_bool(s, f, i, (v->client.roles & ROLE_ENTRY) != 0); break;
		case F_CLIENT_IS_EXIT: set_bool(s, f, i, (v->client.roles & ROLE_EXIT) != 0); break;
		case F_CLIENT_IS_RELAY: set_bool(s, f, i, v->client.roles != 0); break;
		case F_IS_RELAY: set_bool(s, f, i, v->client.roles != 0 || v->server.roles != 0); break;
		case F_FINGERPRINT:
			if(remote->relay != NULL) {
				set_str(s, f, i, remote->relay->fingerprint);
			}
			break;
		case F_NICKNAME:
			if(remote->relay != NULL && remote->relay->nickname[0] != '\0') {
				set_str(s, f, i, remote->relay->nickname);
			}
			break;
		default:
			msgf(s->last_error, sizeof s->last_error, "unknown field id %u", f->field_id);
			return SS_PLUGIN_FAILURE;
		}
	}
	return SS_PLUGIN_SUCCESS;
}
