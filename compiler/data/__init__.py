"""The images a compile learns from: dataset scanning and splitting, and the corruption suite."""
