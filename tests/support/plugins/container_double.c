/*
 * TEST SCAFFOLDING ONLY, never shipped: a stand-in for Falco's `container` plugin, which cannot be built offline
 * (part Go) and cannot be downloaded here.
 *
 * It has the real plugin's name and declares, with the real plugin's types, the fields that tor-sets' rules and
 * falcosecurity/rules' three files (falco_rules.yaml, the default ruleset of Falco 0.44.1, and the incubating and
 * sandbox ones) use, so that Falco loads rules that name them. container.id and container.name are "suggested output" fields (addOutput), as in the real plugin:
 * Falco's default `append_output: [{suggested_output: true}]` appends them to every alert. Every event is on the
 * host: container.id = container.name = "host"; the other fields have no value.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <plugin/plugin_api.h>

#define EXPORT __attribute__((visibility("default")))

static const char FIELDS[] =
        "["
        "{\"type\":\"string\",\"name\":\"container.id\",\"desc\":\"test double: always host\",\"addOutput\":true},"
        "{\"type\":\"string\",\"name\":\"container.name\",\"desc\":\"test double: always host\",\"addOutput\":true},"
        "{\"type\":\"string\",\"name\":\"container.image.repository\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"uint64\",\"name\":\"container.start_ts\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"bool\",\"name\":\"container.privileged\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"string\",\"name\":\"k8s.ns.name\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"string\",\"name\":\"k8s.pod.name\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"string\",\"name\":\"container.mounts\",\"desc\":\"test double: no value\"},"
        "{\"type\":\"string\",\"name\":\"container.mount.dest\",\"desc\":\"test double: no value\","
        "\"arg\":{\"isRequired\":true,\"isKey\":true}}"
        "]";

typedef struct {
	const char *host[2];
	char error[256];
} state_t;

EXPORT const char *plugin_get_required_api_version(void) { return "3.0.0"; }
EXPORT const char *plugin_get_version(void) { return "0.4.0"; }
EXPORT const char *plugin_get_name(void) { return "container"; }
EXPORT const char *plugin_get_description(void) { return "tor-sets test double of the container plugin"; }
EXPORT const char *plugin_get_contact(void) { return "tor-sets tests"; }
EXPORT const char *plugin_get_fields(void) { return FIELDS; }
EXPORT const char *plugin_get_extract_event_sources(void) { return "[\"syscall\"]"; }
EXPORT const char *plugin_get_required_event_schema_version(ss_plugin_t *s) { (void)s; return "4.0.0"; }
EXPORT const char *plugin_get_last_error(ss_plugin_t *s) { return s ? ((state_t *)s)->error : "no state"; }

EXPORT ss_plugin_t *plugin_init(const ss_plugin_init_input *in, ss_plugin_rc *rc) {
	(void)in;
	state_t *s = calloc(1, sizeof *s);
	*rc = s ? SS_PLUGIN_SUCCESS : SS_PLUGIN_FAILURE;
	if(s) {
		s->host[0] = "host";
		s->host[1] = "host";
	}
	return s;
}

EXPORT void plugin_destroy(ss_plugin_t *s) { free(s); }

EXPORT ss_plugin_rc plugin_extract_fields(ss_plugin_t *ps, const ss_plugin_event_input *ev,
                                          const ss_plugin_field_extract_input *in) {
	(void)ev;
	state_t *s = ps;
	for(uint32_t i = 0; i < in->num_fields; i++) {
		ss_plugin_extract_field *f = &in->fields[i];
		f->res_len = 0;
		if(f->field_id <= 1) {
			f->res.str = &s->host[f->field_id];
			f->res_len = 1;
		}
	}
	return SS_PLUGIN_SUCCESS;
}
