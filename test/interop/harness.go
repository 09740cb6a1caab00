package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"tailscale.com/types/key"
)

// suiteDir holds every check's temporary files; testCA signs every server certificate.
var (
	suiteDir string
	testCA   *CA
	checkSeq atomic.Int64
)

// checkTimeout bounds one check; a check that needs longer is broken.
const checkTimeout = 4 * time.Minute

// C is a running check. Fatalf (only from the check's own goroutine) ends it as failed;
// Passf sets the detail printed when it passes. Cleanups run in reverse order.
type C struct {
	Name     string
	Ctx      context.Context
	dir      string
	detail   string
	cleanups []func()
}

type failure struct{ msg string }

func (c *C) Fatalf(format string, args ...any) { panic(failure{fmt.Sprintf(format, args...)}) }
func (c *C) Passf(format string, args ...any)  { c.detail = fmt.Sprintf(format, args...) }
func (c *C) Cleanup(f func())                  { c.cleanups = append(c.cleanups, f) }

func (c *C) Logf(format string, args ...any) {
	if *flagVerbose {
		fmt.Fprintf(os.Stderr, "  [%s] %s\n", c.Name, fmt.Sprintf(format, args...))
	}
}

// Check fails the check if err is not nil, naming what was being done.
func (c *C) Check(err error, what string) {
	if err != nil {
		c.Fatalf("%s: %v", what, err)
	}
}

// TempDir is a fresh directory of this check's.
func (c *C) TempDir() string {
	d, err := os.MkdirTemp(c.dir, "t")
	c.Check(err, "temp dir")
	return d
}

// Eventually calls f every 20 ms until it returns nil or timeout passes, then fails the
// check with f's last error.
func (c *C) Eventually(timeout time.Duration, what string, f func() error) {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || c.Ctx.Err() != nil {
			c.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runCheck(ch check) (ok bool, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	c := &C{Name: ch.name, Ctx: ctx}
	c.dir = filepath.Join(suiteDir, fmt.Sprintf("%02d-%s", checkSeq.Add(1), sanitize(ch.name)))
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return false, err.Error()
	}
	done := make(chan string, 1)
	go func() {
		msg := ""
		defer func() {
			if r := recover(); r != nil {
				if f, isF := r.(failure); isF {
					msg = f.msg
				} else {
					msg = fmt.Sprintf("panic: %v", r)
				}
			}
			for i := len(c.cleanups) - 1; i >= 0; i-- {
				c.cleanups[i]()
			}
			done <- msg
		}()
		ch.fn(c)
	}()
	select {
	case msg := <-done:
		if msg != "" {
			return false, msg
		}
		if c.detail == "" {
			c.detail = "ok"
		}
		return true, c.detail
	case <-time.After(checkTimeout + 30*time.Second):
		return false, fmt.Sprintf("timed out after %v", checkTimeout)
	}
}

func sanitize(s string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(s, "_")
}

// ---- servers -----------------------------------------------------------------------

// ServerOpts says how to start a relay (derpd or upstream derper).
type ServerOpts struct {
	TLS      bool     // -certmode manual with a certificate for "localhost" and 127.0.0.1 from testCA
	STUN     bool     // serve STUN on an ephemeral (derpd) or chosen (derper) port
	Port     int      // 0: derpd picks an ephemeral port; derper gets a free one
	MeshKey  string   // written to a file and passed as -mesh-psk-file
	Args     []string // more flags
	Dir      string   // reuse a directory (and so the key file) of an earlier server
	Upstream bool     // start upstream derper instead of derpd
	Env      []string // more environment variables (NAME=value) for the process
}

// Server is a running derpd or derper on 127.0.0.1.
type Server struct {
	c        *C
	Opts     ServerOpts
	Name     string // "derpd" or "derper"
	Dir      string
	KeyFile  string
	LogFile  string
	Port     int
	STUNPort int
	Public   key.NodePublic
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Hostname is the name the certificate is for (TLS) and clients dial.
const Hostname = "localhost"

func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// URL is the DERP URL a client dials.
func (s *Server) URL() string {
	if s.Opts.TLS {
		return fmt.Sprintf("https://%s:%d/derp", Hostname, s.Port)
	}
	return fmt.Sprintf("http://127.0.0.1:%d/derp", s.Port)
}

// HostPort is the -mesh-with entry for this server.
func (s *Server) HostPort() string {
	if s.Opts.TLS {
		return fmt.Sprintf("%s:%d", Hostname, s.Port)
	}
	return s.Addr()
}

// StartDerpd starts derpd (or derper with o.Upstream) and waits until it serves.
func StartDerpd(c *C, o ServerOpts) *Server {
	s := &Server{c: c, Opts: o, Name: "derpd", Dir: o.Dir}
	if o.Upstream {
		s.Name = "derper"
	}
	if s.Dir == "" {
		s.Dir = c.TempDir()
	}
	s.KeyFile = filepath.Join(s.Dir, "derper.key")
	s.start()
	c.Cleanup(func() { s.Kill() })
	return s
}

// StartDerper starts upstream derper of the pinned release.
func StartDerper(c *C, o ServerOpts) *Server {
	if *flagDerper == "" {
		c.Fatalf("no -derper binary given")
	}
	o.Upstream = true
	return StartDerpd(c, o)
}

func (s *Server) args() []string {
	o := s.Opts
	a := []string{"-c", s.KeyFile, "-http-port", "-1"}
	if o.TLS {
		certDir := filepath.Join(s.Dir, "certs")
		s.c.Check(testCA.IssueFiles(certDir, Hostname), "issue certificate")
		a = append(a, "-certmode", "manual", "-certdir", certDir, "-hostname", Hostname)
	}
	if o.STUN {
		if o.Upstream && s.STUNPort == 0 {
			s.STUNPort = FreeUDPPort(s.c)
		}
		a = append(a, "-stun-port", strconv.Itoa(s.STUNPort))
	} else {
		a = append(a, "-stun=false")
	}
	if o.MeshKey != "" {
		f := filepath.Join(s.Dir, "mesh.key")
		s.c.Check(os.WriteFile(f, []byte(o.MeshKey+"\n"), 0o600), "write mesh key")
		a = append(a, "-mesh-psk-file", f)
	}
	return append(a, o.Args...)
}

func (s *Server) start() {
	c := s.c
	if s.Port == 0 {
		s.Port = s.Opts.Port
	}
	bin := *flagDerpd
	if s.Opts.Upstream {
		bin = *flagDerper
		if s.Port == 0 {
			s.Port = FreePort(c)
		}
	}
	args := append([]string{"-a", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))}, s.args()...)
	s.LogFile = filepath.Join(s.Dir, fmt.Sprintf("%s.%d.log", s.Name, time.Now().UnixNano()))
	logf, err := os.Create(s.LogFile)
	c.Check(err, "log file")
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.Dir
	cmd.Env = append(append(os.Environ(), "HOME="+s.Dir), s.Opts.Env...)
	c.Logf("start %s %s", bin, strings.Join(args, " "))
	c.Check(cmd.Start(), "start "+s.Name)
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { cmd.Wait(); close(s.exited) }()

	c.Eventually(15*time.Second, s.Name+" serving", func() error {
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited: %s; log: %s", s.Name, cmd.ProcessState, tail(s.LogFile, 10))
		default:
		}
		if !s.Opts.Upstream {
			log := readFile(s.LogFile)
			if s.Port == 0 {
				m := regexp.MustCompile(`serving on 127\.0\.0\.1:(\d+)`).FindStringSubmatch(log)
				if m == nil {
					return errors.New("no \"serving on\" line yet")
				}
				s.Port, _ = strconv.Atoi(m[1])
			}
			if s.Opts.STUN && s.STUNPort == 0 {
				m := regexp.MustCompile(`STUN server listening on 127\.0\.0\.1:(\d+)`).FindStringSubmatch(log)
				if m == nil {
					return errors.New("no STUN line yet")
				}
				s.STUNPort, _ = strconv.Atoi(m[1])
			}
		}
		if s.Port == 0 {
			return errors.New("no port yet")
		}
		resp, err := s.HTTPClient().Get(s.BaseURL() + "/derp/probe")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("/derp/probe: %s", resp.Status)
		}
		return nil
	})
	var kf struct{ PrivateKey key.NodePrivate }
	c.Check(json.Unmarshal([]byte(readFile(s.KeyFile)), &kf), "read key file")
	s.Public = kf.PrivateKey.Public()
}

// BaseURL is the server's HTTP(S) root, without a trailing slash.
func (s *Server) BaseURL() string { return strings.TrimSuffix(s.URL(), "/derp") }

// HTTPClient trusts testCA and dials 127.0.0.1 for "localhost".
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   testCA.ClientConfig(),
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp4", addr)
		},
	}}
}

// Running reports whether the process is still alive.
func (s *Server) Running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM and waits up to 10 s for the process to exit.
func (s *Server) Stop() error {
	if !s.Running() {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("%s did not exit within 10 s of SIGTERM", s.Name)
	}
}

// Kill ends the process at once (SIGKILL).
func (s *Server) Kill() {
	if s.Running() {
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Restart starts the server again on the same port with the same key file.
func (s *Server) Restart() {
	s.start()
}

// Log is everything the server has logged in its current run.
func (s *Server) Log() string { return readFile(s.LogFile) }

// Varz fetches /debug/varz and returns each series (name with labels) and its value.
func (s *Server) Varz() (map[string]float64, error) {
	resp, err := s.HTTPClient().Get(s.BaseURL() + "/debug/varz")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("/debug/varz: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// Metric is one series of Varz; it fails the check if the page or the series is missing.
func (s *Server) Metric(series string) float64 {
	m, err := s.Varz()
	s.c.Check(err, "varz")
	v, ok := m[series]
	if !ok {
		s.c.Fatalf("%s: no series %q in /debug/varz", s.Name, series)
	}
	return v
}

// ---- small helpers -----------------------------------------------------------------

// NewMeshKey returns 32 random bytes as 64 lower-case hex digits.
func NewMeshKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(c *C) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	c.Check(err, "free port")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func FreeUDPPort(c *C) int {
	l, err := net.ListenPacket("udp4", "127.0.0.1:0")
	c.Check(err, "free udp port")
	defer l.Close()
	return l.LocalAddr().(*net.UDPAddr).Port
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// tail is the last n lines of a file, joined with " | ".
func tail(p string, n int) string {
	lines := strings.Split(strings.TrimRight(readFile(p), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
