set terminal pngcairo size 1400,500 font 'sans,10'
set output 'scenario-out/scenario.png'
set multiplot layout 1,2 title 'agentbus seed workload: 174 agents, two simulated GPUs (times in simulated s)'
set grid
unset logscale
set logscale xy
set key top left
set title 'open loop: completed vs offered'
set xlabel 'offered req/s'
set ylabel 'completed req/s'
plot 'scenario-out/bus.open' using 1:2 with linespoints lw 2 lc rgb '#56b4e9' title 'bus', x with lines dt 2 lc 'gray' title 'offered'
set title 'open loop: p95 of all calls (solid), interactive (dashed); errors apart'
set ylabel 'p95 (s)'
plot 'scenario-out/bus.open' using 1:3 with linespoints lw 2 lc rgb '#56b4e9' title 'bus', 'scenario-out/bus.open' using 1:4 with linespoints lw 1 dt 2 lc rgb '#56b4e9' notitle, 2 with lines dt 2 lc 'red' title '2 s', 1.5 with lines dt 3 lc 'red' title '1.5 s'
unset multiplot
