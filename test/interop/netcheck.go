package main

// Upstream's net/netcheck against derpd: the STUN round trip (UDP, the mapped address,
// the region's latency, derpd as preferred DERP) and, with UDP left out, the HTTPS
// latency check (GET /derp/latency-check over TLS, certificate verified against the
// suite's CA).
//
// Over loopback alone netcheck still probes: a DERP node whose IPv4 is "127.0.0.1" (or
// that has a STUNTestIP) is a test node (tailcfg.DERPNode.IsTestNode), probed whether or
// not the interface state says IPv4 is available. The node's IPv4 is also what netcheck
// dials and sends STUN to, so nothing is resolved and nothing leaves loopback.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"tailscale.com/net/netcheck"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
)

func init() {
	register("netcheck/report", netcheckReportCheck)
	register("netcheck/https", netcheckHTTPSCheck)
}

const netcheckRegion = 900

func netcheckDERPMap(s *Server) *tailcfg.DERPMap {
	return &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		netcheckRegion: {RegionID: netcheckRegion, RegionCode: "derpd", RegionName: "derpd under test",
			Nodes: []*tailcfg.DERPNode{{
				Name:     "derpd",
				RegionID: netcheckRegion,
				HostName: Hostname, // TLS server name for the HTTPS check
				IPv4:     "127.0.0.1",
				IPv6:     "none",
				STUNPort: s.STUNPort,
				DERPPort: s.Port,
			}}},
	}}
}

// newNetcheckClient is a netcheck.Client sending STUN from a UDP socket of the check's
// own on 127.0.0.1, so that the mapped address derpd reports can be compared with it.
func newNetcheckClient(c *C) (*netcheck.Client, netip.AddrPort) {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	c.Check(err, "listen udp4")
	c.Cleanup(func() { pc.Close() })
	nc := &netcheck.Client{
		NetMon:              netmon.NewStatic(),
		Logf:                nodeLogger(c, "netcheck"),
		Verbose:             true,
		SkipExternalNetwork: true, // no port-mapping or LAN probes
		SendPacket: func(b []byte, dst netip.AddrPort) (int, error) {
			return pc.WriteToUDPAddrPort(b, dst)
		},
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, src, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			nc.ReceiveSTUNPacket(buf[:n], src)
		}
	}()
	return nc, pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func describeReport(r *netcheck.Report) string {
	return fmt.Sprintf("UDP=%v IPv4=%v GlobalV4=%v RegionLatency=%v PreferredDERP=%d",
		r.UDP, r.IPv4, r.GlobalV4, r.RegionLatency, r.PreferredDERP)
}

func netcheckReportCheck(c *C) {
	s := StartDerpd(c, ServerOpts{TLS: true, STUN: true})
	nc, local := newNetcheckClient(c)
	ctx, cancel := context.WithTimeout(c.Ctx, 30*time.Second)
	defer cancel()
	r, err := nc.GetReport(ctx, netcheckDERPMap(s), nil)
	c.Check(err, "GetReport")
	c.Logf("report: %+v", r)
	if !r.UDP || !r.IPv4 {
		c.Fatalf("no STUN round trip with derpd's STUN on 127.0.0.1:%d: %s", s.STUNPort, describeReport(r))
	}
	if r.GlobalV4 != local {
		c.Fatalf("derpd's STUN mapped address %v, the socket is %v: %s", r.GlobalV4, local, describeReport(r))
	}
	if _, ok := r.RegionLatency[netcheckRegion]; !ok || r.PreferredDERP != netcheckRegion {
		c.Fatalf("no latency for derpd's region %d or not preferred: %s", netcheckRegion, describeReport(r))
	}
	c.Passf("STUN to 127.0.0.1:%d: %s (GlobalV4 is the sending socket)", s.STUNPort, describeReport(r))
}

func netcheckHTTPSCheck(c *C) {
	s := StartDerpd(c, ServerOpts{TLS: true, STUN: true})
	nc, _ := newNetcheckClient(c)
	ctx, cancel := context.WithTimeout(c.Ctx, 30*time.Second)
	defer cancel()
	r, err := nc.GetReport(ctx, netcheckDERPMap(s), &netcheck.GetReportOpts{OnlyTCP443: true})
	c.Check(err, "GetReport (OnlyTCP443)")
	c.Logf("report: %+v", r)
	if r.UDP {
		c.Fatalf("UDP in a TCP-only report: %s", describeReport(r))
	}
	if _, ok := r.RegionLatency[netcheckRegion]; !ok || r.PreferredDERP != netcheckRegion {
		c.Fatalf("no HTTPS latency for derpd's region %d or not preferred (see netcheck.log): %s", netcheckRegion, describeReport(r))
	}
	c.Passf("HTTPS latency check (GET https://%s:%d/derp/latency-check, certificate verified): %s",
		Hostname, s.Port, describeReport(r))
}
