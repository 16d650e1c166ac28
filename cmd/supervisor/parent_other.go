//go:build !linux

package main

// stopWithGoRun does nothing off Linux: there a `kill` of `go run` leaves
// the supervisor running (README: build it for long-running use).
func stopWithGoRun() {}
