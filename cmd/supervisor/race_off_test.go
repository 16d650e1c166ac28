//go:build !race

package main

// raceEnabled: the test binary has no race detector; nor does go run.
const raceEnabled = false
