// Package logtail cuts the end off a log or a command's output: where a
// failure shows, and short enough to put in an error.
package logtail

import (
	"os"
	"strings"
)

// Lines is the last n lines of s, without trailing newlines.
func Lines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// File is the last n lines of the file at path, or why it could not be
// read: it goes into an error about something else.
func File(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return Lines(string(b), n)
}
