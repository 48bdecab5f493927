package lab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStart is a process's start time in clock ticks since boot (field 22
// of /proc/<pid>/stat). A PID plus its start time names one process for
// good: a recorded PID that was reused by another process does not match.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: parse after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	const startField = 22 - 3 // fields after ')' start at field 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	return strconv.ParseUint(fields[startField], 10, 64)
}

// sameProcess reports whether pid still is the process that had this start
// time (and is not a zombie we would wait on forever).
func sameProcess(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, err := procStart(pid)
	return err == nil && got == start
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
	if !sameProcess(pid, start) {
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
		if !sameProcess(pid, start) || isZombie(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}
