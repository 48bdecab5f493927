package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Where the real flannel binaries are looked for besides ../shared/tools.
const (
	FlanneldEnv   = "FLANNELD"    // a directory holding flanneld
	FlannelCNIEnv = "FLANNEL_CNI" // a directory holding the flannel CNI plugin
)

// FlannelTools finds the real flanneld and the directory of the flannel
// CNI plugin: in the directories $FLANNELD and $FLANNEL_CNI name, else in
// ../shared/tools beside projectRoot, where the project keeps them (they
// are not served by the Go module proxy). The error says what is missing
// and where it was looked for.
func FlannelTools(projectRoot string) (flanneld, cniDir string, err error) {
	shared := filepath.Join(projectRoot, "..", "shared", "tools")
	find := func(env, name string) (string, error) {
		dirs := []string{shared}
		if d := os.Getenv(env); d != "" {
			dirs = []string{d}
		}
		for _, d := range dirs {
			if checkExecutable(filepath.Join(d, name)) == nil {
				return filepath.Abs(d)
			}
		}
		return "", fmt.Errorf("no executable %s in %v (set $%s to its directory)", name, dirs, env)
	}
	dir, err1 := find(FlanneldEnv, "flanneld")
	cniDir, err2 := find(FlannelCNIEnv, flannelCNIPlugin)
	if err := errors.Join(err1, err2); err != nil {
		return "", "", err
	}
	return filepath.Join(dir, "flanneld"), cniDir, nil
}
