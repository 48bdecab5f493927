// Package procstat reads a process's /proc/<pid>/stat: the lab names its
// processes by PID and start time and waits for them to go, the bench
// measures the agent's CPU time.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Stat is what this project reads of /proc/<pid>/stat.
type Stat struct {
	State     byte   // R, S, D, Z, ... (field 3)
	UTime     uint64 // user time in clock ticks (field 14)
	STime     uint64 // system time in clock ticks (field 15)
	StartTime uint64 // clock ticks after boot (field 22): with the PID, it names one process for good
}

// Read reads /proc/<pid>/stat.
func Read(pid int) (Stat, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	st, err := parse(b)
	if err != nil {
		return Stat{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return st, nil
}

func parse(b []byte) (Stat, error) {
	// The command name (field 2) may hold spaces and ')': fields count
	// from its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("no ')' after the command name")
	}
	f := bytes.Fields(b[i+1:])
	const first = 3 // f[0] is field 3
	if len(f) < 22-first+1 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("%d fields after the command name", len(f))
	}
	st := Stat{State: f[0][0]}
	for _, v := range []struct {
		field int
		to    *uint64
	}{{14, &st.UTime}, {15, &st.STime}, {22, &st.StartTime}} {
		n, err := strconv.ParseUint(string(f[v.field-first]), 10, 64)
		if err != nil {
			return Stat{}, fmt.Errorf("field %d: %w", v.field, err)
		}
		*v.to = n
	}
	return st, nil
}

// CPU is the user plus system time. Clock ticks are USER_HZ, 100 per
// second on every Linux architecture.
func (s Stat) CPU() time.Duration {
	return time.Duration(s.UTime+s.STime) * 10 * time.Millisecond
}
