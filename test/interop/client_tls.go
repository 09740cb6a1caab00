package main

// The TLS side of upstream's DERP client against derpd: the certificate is verified for
// real (against the suite's CA only), the meta-certificate fast start is taken, and a
// TLS 1.2 client, which cannot fast-start, logs in the classic way.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derpconst"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"

	"go4.org/mem"
)

var tlsTransport = transport{"tls", true, false}

func init() {
	register("client/tls/verify", checkTLSVerify)
	register("client/tls/fast-start", checkFastStart)
	register("client/tls/tls12", checkTLS12)
}

// metaCert finds derper's meta certificate in a chain the way derphttp's parseMetaCert
// does: CommonName "derpkey" + the server key in hex, serial = protocol version.
func metaCert(certs []*x509.Certificate) (*x509.Certificate, key.NodePublic, bool) {
	for _, cert := range certs {
		if hx, ok := strings.CutPrefix(cert.Subject.CommonName, derpconst.MetaCertCommonNamePrefix); ok {
			k, err := key.ParseNodePublicUntyped(mem.S(hx))
			if err == nil && cert.SerialNumber.BitLen() <= 8 {
				return cert, k, true
			}
		}
	}
	return nil, key.NodePublic{}, false
}

// loginLine waits for derpd's --verbose line saying the client with this key logged in,
// and returns it.
func loginLine(e *env, k key.NodePublic) string {
	var line string
	e.c.Eventually(5*time.Second, "derpd's log of the login of "+k.ShortString(), func() error {
		for _, l := range strings.Split(e.s.Log(), "\n") {
			if strings.Contains(l, k.ShortString()+": logged in") {
				line = l
				return nil
			}
		}
		return errors.New("no such line")
	})
	return line
}

func checkTLSVerify(c *C) {
	quietStdLog(c) // tlsdial logs each refusal
	e := newEnv(c, tlsTransport, ServerOpts{})
	t := e.newClient("A")
	t.dial()
	cs, ok := t.cl.TLSConnectionState()
	if !ok {
		c.Fatalf("no TLS connection state")
	}
	leaf := cs.PeerCertificates[0]
	chains, err := leaf.Verify(x509.VerifyOptions{DNSName: Hostname, Roots: testCA.Pool})
	c.Check(err, "the leaf derpd sent, against the test CA")
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: Hostname, Roots: x509.NewCertPool()}); err == nil {
		c.Fatalf("the leaf verifies against an empty root set")
	}

	// derpd, like derper with -certmode manual, refuses a handshake for another name.
	ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
	defer cancel()
	viaDerpd := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp4", e.s.Addr())
	}
	errSNI := connectAs(c, ctx, fmt.Sprintf("https://derp.invalid:%d/derp", e.s.Port), viaDerpd)
	if errSNI == nil || !strings.Contains(errSNI.Error(), "tls: ") {
		c.Fatalf("connect to derpd as derp.invalid: %v, want the handshake refused", errSNI)
	}

	// The client itself checks both the CA and the name: against a Go TLS server (which
	// ignores the name asked for), a certificate from another CA and one of the test CA
	// for "localhost" dialed as another name are refused.
	other, err := newCA(filepath.Join(c.TempDir(), "other"))
	c.Check(err, "second CA")
	port, dial := goTLSServer(c, other)
	errCA := connectAs(c, ctx, fmt.Sprintf("https://%s:%d/derp", Hostname, port), dial)
	if errCA == nil || !strings.Contains(errCA.Error(), "certificate signed by unknown authority") {
		c.Fatalf("connect to a server with another CA's certificate: %v, want it refused", errCA)
	}
	port, dial = goTLSServer(c, testCA)
	errName := connectAs(c, ctx, fmt.Sprintf("https://derp.invalid:%d/derp", port), dial)
	if errName == nil || !strings.Contains(errName.Error(), "not derp.invalid") {
		c.Fatalf("connect to a certificate for localhost as derp.invalid: %v, want it refused", errName)
	}
	c.Passf("%s; derpd's chain %q <- %q verifies against the test CA only; derpd refuses SNI derp.invalid (%s) as derper does; the client refuses another CA (%s) and another name (%s)",
		tls.VersionName(cs.Version), leaf.Subject.CommonName, chains[0][len(chains[0])-1].Subject.CommonName,
		lastPart(errSNI), "certificate signed by unknown authority", lastPart(errName))
}

// dialFunc dials an address of the caller's choosing, whatever the URL says.
type dialFunc = func(context.Context, string, string) (net.Conn, error)

// connectAs connects a fresh derphttp client to url through dial.
func connectAs(c *C, ctx context.Context, url string, dial dialFunc) error {
	cl, err := derphttp.NewClient(key.NewNode(), url, c.Logf, netmon.NewStatic())
	c.Check(err, "NewClient")
	defer cl.Close()
	cl.SetURLDialer(dial)
	return cl.Connect(ctx)
}

// goTLSServer serves TLS on loopback with a certificate for Hostname issued by ca, and
// returns its port and a dialer that reaches it.
func goTLSServer(c *C, ca *CA) (int, dialFunc) {
	certDir := c.TempDir()
	c.Check(ca.IssueFiles(certDir, Hostname), "issue certificate")
	kp, err := tls.LoadX509KeyPair(filepath.Join(certDir, Hostname+".crt"), filepath.Join(certDir, Hostname+".key"))
	c.Check(err, "load certificate")
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{kp}})
	c.Check(err, "listen")
	srv := &http.Server{Handler: http.NotFoundHandler(), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	c.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	return ln.Addr().(*net.TCPAddr).Port, func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp4", addr)
	}
}

func lastPart(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func checkFastStart(c *C) {
	e := newEnv(c, tlsTransport, ServerOpts{})
	t := e.newClient("A")
	t.dial()
	cs, ok := t.cl.TLSConnectionState()
	if !ok {
		c.Fatalf("no TLS connection state")
	}
	if cs.Version != tls.VersionTLS13 {
		c.Fatalf("TLS %s, fast start needs 1.3", tls.VersionName(cs.Version))
	}
	mc, k, ok := metaCert(cs.PeerCertificates)
	if !ok {
		c.Fatalf("no meta certificate among the %d certificates derpd sent", len(cs.PeerCertificates))
	}
	if k != e.s.Public {
		c.Fatalf("meta certificate names key %s, the key file %s", k.ShortString(), e.s.Public.ShortString())
	}
	if mc.SerialNumber.Int64() != derp.ProtocolVersion {
		c.Fatalf("meta certificate serial %v, want protocol version %d", mc.SerialNumber, derp.ProtocolVersion)
	}
	if mc != cs.PeerCertificates[len(cs.PeerCertificates)-1] {
		c.Fatalf("meta certificate is not the last of the chain")
	}
	// With TLS 1.3 and that certificate derphttp sends Derp-Fast-Start: 1, skips the
	// 101 and the ServerKey frame: derpd logs which way each client came in.
	line := loginLine(e, t.pub)
	if !strings.HasSuffix(line, "(fast start)") {
		c.Fatalf("derpd did not see a fast start: %q", line)
	}
	// And the connection works.
	ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
	defer cancel()
	c.Check(t.cl.Ping(ctx), "ping")
	c.Passf("TLS 1.3, %d certificates, the last a meta certificate (CN %s..., serial %v, key = the key file's); derpd logged %q; ping answered",
		len(cs.PeerCertificates), mc.Subject.CommonName[:len(derpconst.MetaCertCommonNamePrefix)+8], mc.SerialNumber, line[strings.Index(line, "derp: "):])
}

func checkTLS12(c *C) {
	e := newEnv(c, tlsTransport, ServerOpts{})
	old := e.newClient("A")
	old.cl.TLSConfig = &tls.Config{MaxVersion: tls.VersionTLS12}
	old.dial()
	cs, ok := old.cl.TLSConnectionState()
	if !ok {
		c.Fatalf("no TLS connection state")
	}
	if cs.Version != tls.VersionTLS12 {
		c.Fatalf("negotiated %s with MaxVersion TLS 1.2", tls.VersionName(cs.Version))
	}
	line := loginLine(e, old.pub)
	if strings.HasSuffix(line, "(fast start)") {
		c.Fatalf("derpd saw a fast start from a TLS 1.2 client: %q", line)
	}
	// It relays both ways with a TLS 1.3 client.
	nu := e.newClient("B")
	nu.dial()
	for _, d := range [][2]*tclient{{old, nu}, {nu, old}} {
		from, to := d[0], d[1]
		msg := []byte("from " + from.name)
		c.Check(from.cl.Send(to.pub, msg), "send")
		m, _ := to.await(5*time.Second, "packet", isPacket)
		if rp := m.m.(derp.ReceivedPacket); rp.Source != from.pub || string(rp.Data) != string(msg) {
			c.Fatalf("%s got %q from %s", to.name, rp.Data, rp.Source.ShortString())
		}
	}
	c.Passf("TLS 1.2 (%s) client logged in without fast start (derpd: %q) and relayed both ways with a TLS 1.3 client",
		tls.CipherSuiteName(cs.CipherSuite), line[strings.Index(line, "derp: "):])
}
