package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// netnsEnv marks the child process that runs inside the suite's network namespace.
const netnsEnv = "DERPD_INTEROP_NETNS"

// reexecInNetns runs this program again in a new network namespace (and, when not
// root, a user namespace that maps the caller to root in it). The namespace has only
// its own loopback: nothing the suite starts (derpd, derper, tsnet nodes) can send a
// packet to another machine. Returns the child's exit status.
func reexecInNetns() int {
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if os.Getuid() != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	cmd.SysProcAttr = attr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "interop: cannot create a network namespace (%v); run as root, or pass -no-netns\n", err)
		return 2
	}
	return 0
}

// netnsSetup brings up the namespace's loopback interface, the only one it has, and
// gives it one more address (see netnsLinkAddr).
func netnsSetup() error {
	if err := netnsLoopbackUp(); err != nil {
		return err
	}
	return netnsAddLinkAddr()
}

// netnsLinkAddr is an address from TEST-NET-3 (RFC 5737, never routed) put on the
// namespace's loopback as an alias. Tailscale's netmon counts an interface as "up" only
// if it has a non-loopback address (netmon.State.AnyInterfaceUp), and with none a tsnet
// node considers the network down and never connects to DERP. The kernel here has no
// dummy or veth driver, so the alias goes on lo; the namespace still has no route to
// anywhere but itself.
const netnsLinkAddr = "203.0.113.1"

func netnsAddLinkAddr() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo:1")
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(net.ParseIP(netnsLinkAddr).To4()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("add %s to lo: %w", netnsLinkAddr, err)
	}
	if err := ifr.SetInet4Addr(net.IPv4(255, 255, 255, 255).To4()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("netmask of %s: %w", netnsLinkAddr, err)
	}
	return nil
}

func netnsLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
