package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// output is the -o flag of the commands that print a report: text for
// people, json for scripts.
type output struct {
	format string
	// lines writes each JSON document on one line, for a stream of them
	// (stats --watch prints one each interval); else JSON is indented.
	lines bool
}

func (o *output) addFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "text", "output format: text or json")
}

// check rejects a format other than text and json.
func (o *output) check() error {
	if o.format != "text" && o.format != "json" {
		return fmt.Errorf("output format %q: want text or json", o.format)
	}
	return nil
}

// print writes v as JSON, or for people through text.
func (o *output) print(w io.Writer, v any, text func(io.Writer) error) error {
	if err := o.check(); err != nil {
		return err
	}
	if o.format == "text" {
		return text(w)
	}
	enc := json.NewEncoder(w)
	if !o.lines {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}
