(function () {
  var steps = document.getElementById('steps');
  if (!steps) { return; }
  var bar = document.createElement('div');
  bar.className = 'toolbar';
  [['expand all', true], ['collapse all', false]].forEach(function (b) {
    var btn = document.createElement('button');
    btn.type = 'button';
    btn.textContent = b[0];
    btn.addEventListener('click', function () {
      steps.querySelectorAll('details').forEach(function (d) { d.open = b[1]; });
    });
    bar.appendChild(btn);
    bar.appendChild(document.createTextNode(' '));
  });
  steps.insertBefore(bar, steps.children[1] || null);
})();
