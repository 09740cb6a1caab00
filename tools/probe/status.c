/* The status page at /: one self-contained HTML document (inline CSS and SVG; no
 * JavaScript, nothing fetched from elsewhere). First the regions and their nodes, one row
 * per node: TLS (days left), DERP (the single-node round trip and its latency), STUN over
 * IPv4 and IPv6, the mesh (pairs from this node that work) and a chart of the node's recent
 * DERP latencies; then every probe as upstream's page lists them. The numbers are also in
 * data-* attributes, for tests and scrapers. */
#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/probe/probe.h"

#define CHART_W 180
#define CHART_H 36

static const char CSS[] =
	"body{font-family:system-ui,sans-serif;margin:1.5rem;line-height:1.35;color:#222}"
	"h1{font-weight:500;margin:0 0 .5rem}h2{font-weight:500;margin:1.5rem 0 .5rem}"
	"table{border-collapse:collapse}th,td{padding:4px 8px;text-align:left;"
	"border-bottom:1px solid #ddd;vertical-align:top}th{background:#eee}"
	".good{color:#11772e}.bad{color:#c0141a;font-weight:600}.pending{color:#777}"
	".warn{color:#a06000}.small{font-size:.75rem;color:#555}"
	"#summary.bad{font-weight:600}td.err{font-size:.75rem;max-width:40rem;color:#c0141a}"
	"svg{background:#f7f7f7;border:1px solid #ddd}";

static const char *state(const struct probe_info *p)
{
	return !p ? "none" : !p->ran ? "pending" : p->ok ? "good" : "bad";
}

static const struct probe_info *find(const struct probe_info *p, int n, enum probe_class cls,
				     const char *region, const char *node, const char *to,
				     int family)
{
	for (int i = 0; i < n; i++)
		if (p[i].cls == cls && !strcmp(p[i].region_code, region) &&
		    !strcmp(p[i].node, node) && (!to || !strcmp(p[i].to, to)) &&
		    (cls != PC_UDP || p[i].family == family))
			return &p[i];
	return NULL;
}

/* One status cell: class, state and the numbers as data-* attributes. */
static void cell(struct sbuf *b, const char *cls, const struct probe_info *p)
{
	if (!p) {
		sb_printf(b, "<td class=\"%s none\" data-state=\"none\">&mdash;</td>", cls);
		return;
	}
	sb_printf(b, "<td class=\"%s %s\" data-state=\"%s\"", cls, state(p), state(p));
	if (p->ran && p->ok)
		sb_printf(b, " data-latency-ms=\"%.3f\"", p->latency_s * 1000);
	if (p->cls == PC_TLS && p->not_after > 0)
		sb_printf(b, " data-days-left=\"%.1f\"", (p->not_after - wall_s()) / 86400);
	sb_printf(b, " title=\"");
	sb_html(b, p->name);
	if (p->ran && !p->ok) {
		sb_printf(b, ": ");
		sb_html(b, p->err);
	}
	sb_printf(b, "\">%s", state(p));
	if (p->ran && p->ok) {
		sb_printf(b, " <span class=\"lat\">%.1f&nbsp;ms</span>", p->latency_s * 1000);
	}
	if (p->cls == PC_TLS && p->not_after > 0) {
		double days = (p->not_after - wall_s()) / 86400;
		sb_printf(b, "<br><span class=\"small%s\">%.0f days left</span>",
			  days < 14 ? " warn" : "", floor(days));
	}
	sb_printf(b, "</td>");
}

/* The node's recent DERP latencies as a polyline, oldest on the left. */
static void chart(struct sbuf *b, const struct probe_info *p)
{
	float max = 0;

	if (!p || p->n_hist == 0) {
		sb_printf(b, "<td class=\"chart\" data-points=\"0\"><span class=\"small\">no data"
			     "</span></td>");
		return;
	}
	for (int i = 0; i < p->n_hist; i++)
		if (p->hist_ms[i] > max)
			max = p->hist_ms[i];
	if (max <= 0)
		max = 1;
	sb_printf(b, "<td class=\"chart\" data-points=\"%d\" data-max-ms=\"%.3f\" "
		     "data-last-ms=\"%.3f\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
		     "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\"><title>",
		  p->n_hist, max, p->hist_ms[p->n_hist - 1], CHART_W, CHART_H, CHART_W, CHART_H);
	sb_printf(b, "last %d DERP round trips, up to %.1f ms</title>", p->n_hist, max);
	sb_printf(b, "<polyline fill=\"none\" stroke=\"#2a6fdb\" stroke-width=\"1.5\" points=\"");
	for (int i = 0; i < p->n_hist; i++) {
		double x = p->n_hist == 1 ? CHART_W / 2.0
					  : 2 + (CHART_W - 4) * (double)i / (PROBE_HIST - 1);
		double y = CHART_H - 3 - (CHART_H - 6) * p->hist_ms[i] / max;
		sb_printf(b, "%s%.1f,%.1f", i ? " " : "", x, y);
	}
	sb_printf(b, "\"/><text x=\"%d\" y=\"11\" font-size=\"9\" text-anchor=\"end\" "
		     "fill=\"#555\">%.1f ms</text></svg></td>", CHART_W - 3, max);
}

static void node_row(struct sbuf *b, const struct probe_info *p, int n,
		     const struct probe_info *any)
{
	const char *rc = any->region_code, *node = any->node;
	const struct probe_info *single = find(p, n, PC_MESH, rc, node, node, 0);
	int mesh_ok = 0, mesh_all = 0;

	sb_printf(b, "<tr class=\"node\" data-region=\"");
	sb_html(b, rc);
	sb_printf(b, "\" data-node=\"");
	sb_html(b, node);
	sb_printf(b, "\"><td>");
	sb_html(b, rc);
	sb_printf(b, " <span class=\"small\">%d ", any->region_id);
	sb_html(b, any->region_name);
	sb_printf(b, "</span></td><td class=\"name\">");
	sb_html(b, node);
	sb_printf(b, "</td><td class=\"small\">");
	sb_html(b, any->host);
	sb_printf(b, "</td>");
	cell(b, "tls", find(p, n, PC_TLS, rc, node, NULL, 0));
	cell(b, "derp", single);
	cell(b, "udp", find(p, n, PC_UDP, rc, node, NULL, AF_INET));
	cell(b, "udp6", find(p, n, PC_UDP, rc, node, NULL, AF_INET6));
	for (int i = 0; i < n; i++)
		if (p[i].cls == PC_MESH && !strcmp(p[i].region_code, rc) &&
		    !strcmp(p[i].node, node) && strcmp(p[i].to, node)) {
			mesh_all++;
			mesh_ok += p[i].ran && p[i].ok;
		}
	sb_printf(b, "<td class=\"mesh %s\" data-good=\"%d\" data-total=\"%d\">%d/%d</td>",
		  !mesh_all ? "none" : mesh_ok == mesh_all ? "good" : "bad", mesh_ok, mesh_all,
		  mesh_ok, mesh_all);
	chart(b, single);
	sb_printf(b, "</tr>\n");
}

char *status_html(const struct probe_info *p, int n)
{
	struct sbuf b = { 0 };
	int bad = 0;
	char when[64], d[48];
	time_t now = time(NULL);
	struct tm tm;

	for (int i = 0; i < n; i++)
		bad += !(p[i].ran && p[i].ok);
	gmtime_r(&now, &tm);
	strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
	sb_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
		      "<title>DERP Prober</title><style>%s</style></head><body>\n"
		      "<h1>DERP Prober</h1>\n", CSS);
	if (bad)
		sb_printf(&b, "<p id=\"summary\" class=\"bad\" data-total=\"%d\" data-bad=\"%d\">"
			      "%d out of %d probes failed or never ran.</p>\n", n, bad, bad, n);
	else
		sb_printf(&b, "<p id=\"summary\" class=\"good\" data-total=\"%d\" data-bad=\"0\">"
			      "All %d probes are healthy.</p>\n", n, n);
	sb_printf(&b, "<p class=\"small\">As of %s (reload for news) &middot; derpd-probe %s "
		      "&middot; <a href=\"/metrics\">Prober metrics</a></p>\n", when,
		  DERPD_VERSION);

	sb_printf(&b, "<h2>Regions</h2>\n<table id=\"nodes\"><thead><tr><th>Region</th>"
		      "<th>Node</th><th>Host</th><th>TLS</th><th>DERP</th><th>STUN IPv4</th>"
		      "<th>STUN IPv6</th><th>Mesh</th><th>Recent DERP latency</th></tr></thead>"
		      "<tbody>\n");
	/* nodes in region order, each once: the first probe that names it stands for it */
	int *order = malloc(sizeof *order * (size_t)(n ? n : 1)), no = 0;
	for (int i = 0; order && i < n; i++) {
		if (p[i].cls == PC_MAP)
			continue;
		int seen = 0;
		for (int k = 0; k < no && !seen; k++)
			seen = !strcmp(p[order[k]].region_code, p[i].region_code) &&
			       !strcmp(p[order[k]].node, p[i].node);
		if (!seen)
			order[no++] = i;
	}
	for (int a = 1; a < no; a++) /* insertion sort by region id, then node name */
		for (int k = a; k > 0; k--) {
			const struct probe_info *x = &p[order[k - 1]], *y = &p[order[k]];
			if (x->region_id < y->region_id ||
			    (x->region_id == y->region_id && strcmp(x->node, y->node) <= 0))
				break;
			int t = order[k];
			order[k] = order[k - 1];
			order[k - 1] = t;
		}
	for (int k = 0; k < no; k++)
		node_row(&b, p, n, &p[order[k]]);
	free(order);
	sb_printf(&b, "</tbody></table>\n");

	sb_printf(&b, "<h2>Probes</h2>\n<table id=\"probes\"><thead><tr><th>Name</th>"
		      "<th>Class</th><th>Interval</th><th>Last run</th><th>Status</th>"
		      "<th>Latency</th><th>Recent</th><th>Last error / note</th></tr></thead>"
		      "<tbody>\n");
	for (int i = 0; i < n; i++) {
		const struct probe_info *q = &p[i];
		int ok = 0;
		for (int k = 0; k < q->n_recent; k++)
			ok += q->recent_ok[k];
		sb_printf(&b, "<tr class=\"probe\" data-name=\"");
		sb_html(&b, q->name);
		sb_printf(&b, "\" data-state=\"%s\"><td>", state(q));
		sb_html(&b, q->name);
		sb_printf(&b, "</td><td>%s</td><td>%gs</td><td>", probe_class_name(q->cls),
			  (double)q->interval_ms / 1000);
		if (q->ran) {
			fmt_duration(d, sizeof d, floor(wall_s() - q->end));
			sb_printf(&b, "%s ago", d);
		} else {
			sb_printf(&b, "never");
		}
		sb_printf(&b, "</td><td class=\"%s\">%s%s</td><td>", state(q), state(q),
			  q->in_flight ? " (running)" : "");
		if (q->ran && q->ok) {
			fmt_duration(d, sizeof d, q->latency_s);
			sb_printf(&b, "%s", d);
		}
		sb_printf(&b, "</td><td class=\"small\">%d/%d ok</td><td class=\"%s\">", ok,
			  q->n_recent, q->ran && !q->ok ? "err" : "small");
		sb_html(&b, q->ran && !q->ok ? q->err : q->note);
		sb_printf(&b, "</td></tr>\n");
	}
	sb_printf(&b, "</tbody></table>\n</body></html>\n");
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
