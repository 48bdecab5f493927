package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// CPUTimes are the machine-wide jiffies of /proc/stat's "cpu" line. The
// file is the same in every network namespace: it counts the work of every
// CPU, including the softirq time the datapath spends.
type CPUTimes struct {
	Busy uint64 // user+nice+system+irq+softirq+steal
	All  uint64 // Busy + idle + iowait
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat.
func ParseProcStat(text string) (CPUTimes, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("parse /proc/stat field %d: %w", i+1, err)
			}
			v[i] = n
		}
		// user nice system idle iowait irq softirq steal
		busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return CPUTimes{Busy: busy, All: busy + v[3] + v[4]}, nil
	}
	return CPUTimes{}, fmt.Errorf("no cpu line in /proc/stat")
}

func readCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	return ParseProcStat(string(b))
}

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI).
const userHZ = 100

// NsPerPacket is the busy CPU time between two snapshots per delivered
// packet.
func NsPerPacket(before, after CPUTimes, packets int64) (float64, error) {
	if packets <= 0 {
		return 0, fmt.Errorf("no packet delivered")
	}
	if after.Busy < before.Busy {
		return 0, fmt.Errorf("/proc/stat went backwards")
	}
	ns := float64(after.Busy-before.Busy) * 1e9 / userHZ
	return ns / float64(packets), nil
}
