set terminal pngcairo size 1200,760 noenhanced font 'DejaVu Sans,12'
set output "docs/quality/wikitext2-512-gpu-w600.png"
set title "SmolLM2-135M-Instruct.Q4_1.gguf, WikiText-2 test: KV presets against the fp16 cache" . "\n" . "600 windows x 512 tokens, 153600 scored tokens per preset"
set xlabel "bits per key/value element at 512 tokens (fp16 sinks and window included)"
set ylabel 'KL divergence from the fp16 cache (nats per token)'
set logscale y
set grid
set yrange [0.000111:5.01]
set key top right
set offsets graph 0.06, graph 0.06, 0, 0
plot "docs/quality/wikitext2-512-gpu-w600.dat" using 1:2 with points pt 7 ps 1.5 lc rgb '#1f77b4' title 'mean KLD', \
     "docs/quality/wikitext2-512-gpu-w600.dat" using 1:3 with points pt 6 ps 1.5 lc rgb '#d62728' title 'p99 KLD', \
     "docs/quality/wikitext2-512-gpu-w600.dat" using 1:2:4 with labels offset 0,1.2 notitle
