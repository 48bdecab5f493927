package lab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/hgw-ebpf/hgw-ebpf/internal/procstat"
)

// procStart is a process's start time in clock ticks after boot. A PID
// plus its start time names one process for good: a recorded PID that was
// reused by another process does not match.
func procStart(pid int) (uint64, error) {
	st, err := procstat.Read(pid)
	return st.StartTime, err
}

// running reports whether pid still is the process that had this start
// time and has not exited: a zombie has, and waiting on it would never end.
func running(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := procstat.Read(pid)
	return err == nil && st.StartTime == start && st.State != 'Z'
}

// procNetns is the inode of a process's network namespace.
func procNetns(pid int) (uint64, error) {
	return netnsInode(fmt.Sprintf("/proc/%d/ns/net", pid))
}

// procsInNetns lists the processes whose network namespace is one of the
// given inodes. Only lab code starts processes in lab namespaces, so after
// a crash this finds the agents and helpers the lost state file recorded.
func procsInNetns(inodes map[uint64]string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ino, err := procNetns(pid)
		if err != nil {
			continue // gone, or a kernel thread
		}
		if _, ok := inodes[ino]; ok {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// terminate sends SIGTERM to one process and escalates to SIGKILL after
// grace. It returns once the process is gone (or is a zombie of someone
// else's) or after the SIGKILL wait.
func terminate(pid int, start uint64, grace time.Duration) error {
	if !running(pid, start) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	if waitGone(pid, start, grace) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", pid, err)
	}
	if !waitGone(pid, start, 2*time.Second) {
		return fmt.Errorf("pid %d survived SIGKILL", pid)
	}
	return nil
}

// waitGone polls until the process has exited. A zombie counts as gone: its
// parent reaps it (if the parent is this process, its exec.Cmd.Wait does).
func waitGone(pid int, start uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !running(pid, start) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
