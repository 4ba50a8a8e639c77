/*
 * libFuzzer driver for the guest init's command-line parser (fuzz/cmdline.py builds it:
 * clang -DNINEP_FUZZ -fsanitize=fuzzer,address,undefined fuzz/cmdline.c).  It includes
 * the init's one C file, so the parser fuzzed is the parser shipped; with NINEP_FUZZ the
 * init has no main and its die() longjmps back here.
 */
#include "../ninep/vm/guest-init/ninep-init.c"

/* The input is /proc/cmdline's text, parsed as main parses it, then every value parsed
 * as the transport that would use it does.  ASan/UBSan catch the memory and arithmetic
 * errors; the checks below catch a value that is not in the line. */
static int inside(const char *value, const char *text, size_t size, const char *default_value)
{
	return value == default_value ||
	       (value >= text && value <= text + size && memchr(value, 0, text + size + 1 - value));
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static struct config defaults;
	static int saved;
	struct in_addr addr, mask;
	char scheme[32], host[64], *text;
	const char **values[] = { &cfg.root, &cfg.src, &cfg.ip, &cfg.gw, &cfg.msize, &cfg.cache,
				  &cfg.aname, &cfg.access, &cfg.overlay, &cfg.rootflags,
				  &cfg.rootfstype, &cfg.init };
	const char **default_values[] = { &defaults.root, &defaults.src, &defaults.ip,
		&defaults.gw, &defaults.msize, &defaults.cache, &defaults.aname, &defaults.access,
		&defaults.overlay, &defaults.rootflags, &defaults.rootfstype, &defaults.init };
	if (!saved)
		defaults = cfg, saved = 1;
	cfg = defaults;
	quiet = 0;
	if (size >= sizeof cmdline) /* read_file's limit */
		size = sizeof cmdline - 1;
	text = malloc(size + 1); /* exactly the input: ASan sees any read past it */
	memcpy(text, data, size);
	text[size] = 0;
	if (setjmp(fuzz_refused) == 0) {
		parse_cmdline_words(text);
		for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
			if (!inside(*values[i], text, size, *default_values[i]))
				__builtin_trap();
		if (cfg.timeout_s < 0 || cfg.readonly > 1u)
			__builtin_trap();
	}
	if (setjmp(fuzz_refused) == 0) {
		const char *rest = split_url(cfg.src, scheme, sizeof scheme);
		long port = split_host_port(rest, host, sizeof host, 564,
					    strcmp(scheme, "tcp") ? 0xffffffffL : 65535);
		if (port < 0 || port > 0xffffffffL || strlen(host) >= sizeof host)
			__builtin_trap();
	}
	if (setjmp(fuzz_refused) == 0)
		parse_ipv4_prefix(cfg.ip, &addr, &mask);
	if (setjmp(fuzz_refused) == 0) {
		char opts[OPTS_MAX];
		mount_options(opts, "trans=fd,rfdno=3,wfdno=3");
		if (strlen(opts) >= OPTS_MAX)
			__builtin_trap();
	}
	free(text);
	return 0;
}
