#include "server/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

int log_verbose;

void log_info(const char *fmt, ...)
{
	char line[1024];
	time_t now = time(NULL);
	struct tm tm;
	va_list ap;
	size_t n;

	localtime_r(&now, &tm);
	n = strftime(line, sizeof line, "%Y/%m/%d %H:%M:%S ", &tm);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
	va_end(ap);
	/* One write per line so lines from different threads never interleave. */
	fprintf(stderr, "%s\n", line);
}
